// Each person lands on their own work (issue 16), in Debian's headless Chromium against the real
// binary: township staff with the page open hear a new report over the work event stream (badge from
// 0 to 1 and a notice, no reload); a grid worker sees the report button and then the report waiting
// for her check, first and marked, above her other open reports; staff see new and overdue reports
// (how late, and who holds them) and the warning in force; a department handler sees the department's
// queue with the overdue one first.
//
// Overdue without waiting hours: the node is given a category with deadlines of seconds (the real
// "消防安全" name, accept within 2 s and resolve within 3 s), the reports are made, and after the
// deadlines have passed the node is restarted, because it checks deadlines when it starts (and every
// minute after, which would be too long to wait).
//
// Run by tests/run.sh; E2E_NODE_BIN names the binary; E2E_UI_FROM_DISK=1 serves ui/ from disk.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { FROM_DISK, serveUiFromDisk } from './ui-from-disk.mjs';
import { serveNode, signedIn } from './node-kit.mjs';

const BIN = process.env.E2E_NODE_BIN;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ADMIN_PASSWORD = 'Work-Admin-Pass-2026';
const PEOPLE_PASSWORD = 'Work-People-Pass-2026';
const ENV = { PATH: process.env.PATH, TOWNSHIP_HTTP__HTTPS_LISTEN: '127.0.0.1:0' };
const QUICK = '消防安全';
const shot = (page, name) => page.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, `work-${name}.png`), fullPage: true });

let dir;
let data;
let node;
let base;
let browser;


async function stopNode() {
  if (!node || node.exitCode !== null) return;
  const exited = new Promise((resolve) => node.once('exit', resolve));
  node.kill('SIGTERM');
  await exited;
}


const report = (as, title, category) => as('POST', '/api/v1/incidents', {
  category, title, description: '', area: '330723001001', place: '王宅村',
});
const step = (as, id, action, extra = {}) => as('POST', `/api/v1/incidents/${id}/transitions`, { action, ...extra });

async function newPage(viewport) {
  const context = await browser.newContext({ viewport, serviceWorkers: 'block' });
  if (FROM_DISK) await serveUiFromDisk(context, base);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) errors.push(m.text()); });
  return { context, page, errors };
}

// Through the sign-in form, which returns to "/": the landing page.
async function signIn(page, username, password = PEOPLE_PASSWORD) {
  await page.goto(base + '/');
  await page.getByRole('heading', { name: '登录' }).waitFor();
  await page.locator('#login-username').fill(username);
  await page.locator('#login-password').fill(password);
  await page.locator('#login-form button[type=submit]').click();
  await page.getByRole('heading', { name: '我的工作' }).waitFor();
  assert.equal(new URL(page.url()).pathname, '/');
  await page.locator('#work-sections[data-ready]').waitFor({ state: 'attached' });
}

const startNode = () => serveNode(BIN, ['--data-dir', data], { ...ENV, RUST_LOG: 'info' });
const apiSession = async (username, password = PEOPLE_PASSWORD) => (await signedIn(base, username, password)).call;


before(async () => {
  assert.ok(BIN, 'set E2E_NODE_BIN to the township-node binary');
  dir = mkdtempSync(join(tmpdir(), 'township-work-'));
  data = join(dir, 'node');
  writeFileSync(join(dir, 'admin.pw'), `${ADMIN_PASSWORD}\n`);
  writeFileSync(join(dir, 'people.pw'), `${PEOPLE_PASSWORD}\n`);
  execFileSync(BIN, ['init', '--data-dir', data, '--area', '330723001', '--name', '熟溪街道', '--role', 'township',
    '--admin-password-file', join(dir, 'admin.pw')], { env: ENV });
  for (const [username, role, area, name, dept] of [
    ['grid.wang', 'grid_worker', '330723001001', '王芳', null],
    ['staff.li', 'township_staff', '330723001', '李明', null],
    ['water.zhao', 'dept_handler', '330723001', '赵水利', 'water'],
  ]) {
    const args = ['user', 'add', '--data-dir', data, '--username', username, '--role', role, '--area', area,
      '--display-name', name, '--password-file', join(dir, 'people.pw')];
    if (dept) args.push('--department', dept);
    execFileSync(BIN, args, { env: ENV });
  }
  // Giving categories replaces the built-in list: the ones these reports use, one with deadlines of
  // seconds.
  writeFileSync(join(data, 'township-node.toml'), [
    ['安全隐患', '2h', '72h'], ['环境卫生', '1days', '5days'], ['道路交通', '8h', '72h'], [QUICK, '2s', '3s'],
  ].map(([name, accept, resolve]) => `[[categories]]\nname = "${name}"\naccept_within = "${accept}"\nresolve_within = "${resolve}"\nauto_escalate = false\n`).join('\n'));
  ({ child: node, base } = await startNode());
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await stopNode().catch(() => {});
  if (dir && !process.env.KEEP_E2E) rmSync(dir, { recursive: true, force: true });
});

// The demo data, made once for the landing tests, after the live test has had its empty node.
let seeding = null;
const titles = {
  verify: '村口垃圾三天没清运',
  open: '河堤护栏松动',
  quickNew: '仓库有烟味',
  quickDispatched: '消防通道被堵',
  queue: '水渠堵塞',
  warning: '熟溪街道暴雨橙色预警',
};
function seeded() {
  seeding ||= (async () => {
    const [worker, staff, handler] = await Promise.all([apiSession('grid.wang'), apiSession('staff.li'), apiSession('water.zhao')]);
    // Resolved by the department, waiting for her check.
    const verify = await report(worker, titles.verify, '环境卫生');
    await step(staff, verify.id, 'accept');
    await step(staff, verify.id, 'dispatch', { department: 'water' });
    await step(handler, verify.id, 'start');
    await step(handler, verify.id, 'resolve', { note: '已清运' });
    await report(worker, titles.open, '安全隐患');
    // Past their deadlines seconds from now: one nobody accepted, one the water department holds.
    await report(worker, titles.quickNew, QUICK);
    const late = await report(worker, titles.quickDispatched, QUICK);
    await step(staff, late.id, 'accept');
    await step(staff, late.id, 'dispatch', { department: 'water' });
    const lateAt = Date.now();
    const queued = await report(worker, titles.queue, '环境卫生');
    await step(staff, queued.id, 'accept');
    await step(staff, queued.id, 'dispatch', { department: 'water' });
    await staff('POST', '/api/v1/warnings', { level: 'orange', event: 'rainstorm', headline: titles.warning, area: '330723001' });
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, lateAt + 3500 - Date.now())));
    await stopNode();
    ({ child: node, base } = await startNode());
    // The check at start runs beside the listener: give it a moment.
    const staffAgain = await apiSession('staff.li');
    for (let tries = 0; ; tries++) {
      const work = await staffAgain('GET', '/api/v1/incidents/work');
      if (work.items.find((i) => i.kind === 'overdue')?.count === 2) break;
      assert.ok(tries < 25, `two overdue after the restart: ${JSON.stringify(work)}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  })();
  return seeding;
}

test('staff with the landing page open hear of a new report live: the badge goes from 0 to 1 and a notice names it', async () => {
  const { context, page, errors } = await newPage({ width: 1366, height: 768 });
  await signIn(page, 'staff.li');
  await page.locator('#work-new .work-empty').waitFor();
  assert.ok(await page.locator('#work-count').isHidden(), 'no badge with nothing waiting');
  assert.equal(await page.locator('#work-n-new').textContent(), '0');
  await page.evaluate(() => { window.__marker = 'same-document'; });
  // The stream sends the summary on connect (the badge then holds a count, 0 and hidden); a report
  // filed before that would be no news.
  await page.locator('#work-count[data-count="0"]').waitFor({ state: 'attached' });

  const worker = await apiSession('grid.wang');
  await report(worker, '路灯不亮', '道路交通');
  const badge = page.locator('#work-count:not([hidden])');
  await badge.waitFor({ timeout: 10000 });
  assert.equal(await badge.getAttribute('data-count'), '1');
  assert.match(await badge.getAttribute('aria-label'), /^待办 1 件/);
  assert.equal(await badge.getAttribute('href'), '/');
  const box = await badge.boundingBox();
  assert.ok(box.height >= 44 && box.width >= 44, `badge is a 44 px target: ${box.width} × ${box.height}`);
  const toast = page.locator('#work-toast .toast');
  await toast.waitFor();
  assert.equal(await page.locator('#work-toast').getAttribute('role'), 'status');
  assert.equal(await page.locator('#work-toast').getAttribute('aria-live'), 'polite');
  assert.equal(await toast.locator('.toast-text').textContent(), '新上报 1 件');
  assert.equal(await toast.locator('a').getAttribute('href'), '/');
  await shot(page, 'staff-notice');
  // The landing page follows the summary: the report is listed without a reload.
  await page.locator('#work-list-new li', { hasText: '路灯不亮' }).waitFor();
  assert.equal(await page.locator('#work-n-new').textContent(), '1');
  assert.equal(await page.evaluate(() => window.__marker), 'same-document', 'no reload');
  // Dismissed by hand (it would go by itself after 8 s).
  await toast.locator('button.toast-close').click();
  await toast.waitFor({ state: 'detached' });
  assert.deepEqual(errors, []);
  await context.close();
});

test("a grid worker lands on the report button, then her check, first and marked, above her other reports", async () => {
  await seeded();
  const { context, page, errors } = await newPage({ width: 390, height: 844 });
  await signIn(page, 'grid.wang');
  const button = page.locator('#work-report');
  assert.equal(await button.getAttribute('href'), '/incidents/new');
  const b = await button.boundingBox();
  assert.ok(b.height >= 56, `the report button is ${b.height} px tall`);
  assert.ok(b.width >= 390 - 2 * 16, `the report button spans the phone: ${b.width} px`);
  assert.equal(await page.locator('#main form, #main details').count(), 0, 'no filters on the landing page');

  const sections = await page.locator('#work-sections > section').evaluateAll((s) => s.map((x) => x.dataset.kind));
  assert.deepEqual(sections, ['verify', 'mine']);
  const verify = page.locator('#work-verify');
  assert.match(await verify.getAttribute('class'), /\bhighlight\b/);
  const item = verify.locator('li.work-item.highlight', { hasText: titles.verify });
  await item.locator('.work-flag', { hasText: '待您核查' }).waitFor();
  assert.equal(await page.locator('#work-n-verify').textContent(), '1');
  // Marked by more than words: an accent border, unlike the plain sections.
  const [accent, plain] = await Promise.all([verify, page.locator('#work-mine')].map((l) => l.evaluate((e) => getComputedStyle(e).borderLeftWidth)));
  assert.notEqual(accent, plain);
  const mine = page.locator('#work-list-mine');
  for (const title of [titles.open, titles.quickNew, titles.quickDispatched, titles.queue, '路灯不亮']) {
    await mine.locator('li', { hasText: title }).waitFor();
  }
  assert.equal(await mine.locator('li', { hasText: titles.verify }).count(), 0, 'her check is not repeated below');
  const [top, checks, others] = await Promise.all([button, verify, page.locator('#work-mine')].map((l) => l.boundingBox()));
  assert.ok(top.y < checks.y && checks.y + checks.height <= others.y, 'button, then her checks, then her other reports');
  assert.equal(await page.locator('#work-count').getAttribute('data-count'), '1');
  await shot(page, 'grid-worker');
  // The item opens the incident, where she verifies.
  await item.locator('a').click();
  await page.locator('#actions button[data-action="verify"]').waitFor();
  assert.deepEqual(errors, []);
  await context.close();
});

test('staff land on new and overdue reports, how late and who holds them, escalations and the warning in force', async () => {
  await seeded();
  const { context, page, errors } = await newPage({ width: 1366, height: 900 });
  await signIn(page, 'staff.li');
  const sections = await page.locator('#work-sections > section').evaluateAll((s) => s.map((x) => x.dataset.kind));
  assert.deepEqual(sections, ['new', 'overdue', 'escalated', 'warnings']);
  for (const title of ['路灯不亮', titles.open, titles.quickNew]) {
    await page.locator('#work-list-new li', { hasText: title }).waitFor();
  }
  assert.equal(await page.locator('#work-n-new').textContent(), '3');
  assert.equal(await page.locator('#work-all-new').getAttribute('href'), '/incidents?state=reported');
  const overdue = page.locator('#work-list-overdue');
  const dispatched = overdue.locator('li', { hasText: titles.quickDispatched });
  assert.match(await dispatched.locator('.work-late').textContent(), /^(刚刚超期|超期 \d+ (分钟|小时|天)) · 水利办理中$/);
  const unaccepted = overdue.locator('li', { hasText: titles.quickNew });
  assert.match(await unaccepted.locator('.work-late').textContent(), /超期 · 乡镇待处理$|超期 \d+ 分钟 · 乡镇待处理$/);
  assert.equal(await page.locator('#work-n-overdue').textContent(), '2');
  assert.equal(await page.locator('#work-all-overdue').getAttribute('href'), '/incidents?overdue=true');
  await page.locator('#work-escalated .work-empty', { hasText: '没有上报县级的事件。' }).waitFor();
  await page.locator('#work-list-warnings li', { hasText: titles.warning }).waitFor();
  // Each incident counted once: three new (one of them overdue) and the dispatched overdue one.
  assert.equal(await page.locator('#work-count').getAttribute('data-count'), '4');
  await shot(page, 'staff');
  // The node overview moved to its own page and stays in the menu.
  await page.locator('#nav a[href="/node"]').click();
  await page.getByRole('heading', { name: '节点概览' }).waitFor();
  await page.locator('#nav a[href="/"]').click();
  await page.locator('#work-sections[data-ready]').waitFor({ state: 'attached' });
  assert.deepEqual(errors, []);
  await context.close();
});

test("a department handler lands on the department's queue, the overdue one first", async () => {
  await seeded();
  const { context, page, errors } = await newPage({ width: 360, height: 780 });
  await signIn(page, 'water.zhao');
  const sections = await page.locator('#work-sections > section').evaluateAll((s) => s.map((x) => x.dataset.kind));
  assert.deepEqual(sections, ['queue']);
  assert.equal(await page.locator('#work-report').count(), 0);
  const rows = page.locator('#work-list-queue li');
  await rows.nth(1).waitFor();
  assert.deepEqual(await rows.locator('.work-item-title').allTextContents(), [titles.quickDispatched, titles.queue]);
  await rows.first().locator('.work-late').waitFor();
  assert.equal(await page.locator('#work-n-queue').textContent(), '2');
  await shot(page, 'handler');
  assert.equal(await page.locator('#work-all-queue').getAttribute('href'), '/incidents?state=dispatched,in_progress&department=water');
  assert.deepEqual(errors, []);
  await context.close();
});

test('signed out, "/" asks for sign-in, and the node overview is open to anyone at /node', async () => {
  const { context, page, errors } = await newPage({ width: 360, height: 780 });
  await page.goto(base + '/');
  await page.getByRole('heading', { name: '登录' }).waitFor();
  assert.equal(new URL(page.url()).searchParams.get('next'), '/');
  assert.ok(await page.locator('#work-count').isHidden());
  await page.goto(base + '/node');
  await page.getByRole('heading', { name: '节点概览' }).waitFor();
  await page.getByText('330723001', { exact: true }).waitFor();
  assert.deepEqual(errors, []);
  await context.close();
});
