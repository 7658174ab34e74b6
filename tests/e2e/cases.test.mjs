// The incident pages for people, not for the API (issue 16), in Debian's headless Chromium against the
// real binary: villages, reporters and departments by name (the node is given [[areas]] names in a
// config file), dispatch with check boxes and the category's default deadline, a duplicate linked
// both ways, the report form's map (plain, no tiles) setting the location that is sent, and the list's
// map view.
//
// Run by tests/run.sh; E2E_NODE_BIN names the binary; E2E_UI_FROM_DISK=1 serves ui/ from disk.
// E2E_ARTIFACTS: where screenshots go.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { FROM_DISK, serveUiFromDisk } from './ui-from-disk.mjs';
import { serveNode, signedIn } from './node-kit.mjs';

const BIN = process.env.E2E_NODE_BIN;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = process.env.E2E_ARTIFACTS;
const ADMIN_PASSWORD = 'Cases-Admin-Pass-2026';
const PEOPLE_PASSWORD = 'Cases-People-Pass-2026';
const ENV = { PATH: process.env.PATH, TOWNSHIP_HTTP__HTTPS_LISTEN: '127.0.0.1:0' };
const VILLAGE = '330723001001';
const HOUR = 3600000;
// The catalog's 安全隐患: resolve within 3 days.
const SAFETY_RESOLVE_MS = 72 * HOUR;

let dir;
let node;
let base;
let browser;
const seeded = {};



const startNode = (data, config) => serveNode(BIN, ['--data-dir', data, '--config', config], { ...ENV, RUST_LOG: 'info' });
const apiSession = (username, password) => signedIn(base, username, password);


before(async () => {
  assert.ok(BIN, 'set E2E_NODE_BIN to the township-node binary');
  dir = mkdtempSync(join(tmpdir(), 'township-cases-'));
  const data = join(dir, 'node');
  writeFileSync(join(dir, 'admin.pw'), `${ADMIN_PASSWORD}\n`);
  writeFileSync(join(dir, 'people.pw'), `${PEOPLE_PASSWORD}\n`);
  execFileSync(BIN, ['init', '--data-dir', data, '--area', '330723001', '--name', '熟溪街道', '--role', 'township',
    '--admin-password-file', join(dir, 'admin.pw')], { env: ENV });
  for (const [username, role, area, name] of [
    ['grid.wang', 'grid_worker', VILLAGE, '王芳'],
    ['staff.li', 'township_staff', '330723001', '李明'],
  ]) {
    execFileSync(BIN, ['user', 'add', '--data-dir', data, '--username', username, '--role', role, '--area', area,
      '--display-name', name, '--password-file', join(dir, 'people.pw')], { env: ENV });
  }
  // Named areas with outlines (a township and its village), no [map] tiles: the maps are plain.
  const config = join(dir, 'cases.toml');
  writeFileSync(config, [
    '[[areas]]',
    'code = "330723001"',
    'name = "熟溪街道"',
    'polygon = "28.87,119.78 28.93,119.78 28.93,119.85 28.87,119.85 28.87,119.78"',
    '',
    '[[areas]]',
    `code = "${VILLAGE}"`,
    'name = "王宅村"',
    'polygon = "28.895,119.80 28.905,119.80 28.905,119.82 28.895,119.82 28.895,119.80"',
    '',
  ].join('\n'));
  ({ child: node, base } = await startNode(data, config));

  const admin = await apiSession('admin', ADMIN_PASSWORD);
  const worker = await apiSession('grid.wang', PEOPLE_PASSWORD);
  const staff = await apiSession('staff.li', PEOPLE_PASSWORD);
  // The original: accepted, located in the village (the list's map and the report form's rings show it).
  const original = await worker.call('POST', '/api/v1/incidents', {
    category: '安全隐患', title: '河堤护栏倒塌', description: '王宅村东头河堤护栏倒了一段。', area: VILLAGE,
    place: '王宅村东头河堤', location: { lat: 28.9, lon: 119.81 },
  });
  await staff.call('POST', `/api/v1/incidents/${original.id}/transitions`, { action: 'accept' });
  // The same matter reported again, and accepted: staff may mark it as a duplicate.
  const again = await worker.call('POST', '/api/v1/incidents', { category: '安全隐患', title: '河堤护栏又倒了', area: VILLAGE });
  await staff.call('POST', `/api/v1/incidents/${again.id}/transitions`, { action: 'accept' });
  // Another matter, dispatched to water, for the list's holder and lateness.
  const held = await worker.call('POST', '/api/v1/incidents', { category: '环境卫生', title: '村口垃圾堆放', area: VILLAGE });
  await staff.call('POST', `/api/v1/incidents/${held.id}/transitions`, { action: 'accept' });
  await staff.call('POST', `/api/v1/incidents/${held.id}/transitions`, { action: 'dispatch', department: 'water' });
  Object.assign(seeded, { original: original.id, again: again.id, held: held.id, tokens: { admin: admin.token, worker: worker.token, staff: staff.token } });

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  node?.kill('SIGTERM');
  if (dir && !process.env.KEEP_E2E) rmSync(dir, { recursive: true, force: true });
});

// A browser signed in as `who`, with script errors collected.
async function open(who, { width = 390, height = 844, phone = true, geolocation } = {}) {
  const context = await browser.newContext({
    viewport: { width, height }, isMobile: phone, hasTouch: phone, serviceWorkers: 'block',
    ...(geolocation ? { geolocation, permissions: ['geolocation'] } : {}),
  });
  if (FROM_DISK) await serveUiFromDisk(context, base);
  await context.addCookies([{ name: 'tn_session', value: seeded.tokens[who], url: base, httpOnly: true, sameSite: 'Strict' }]);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) errors.push(m.text()); });
  return { context, page, errors };
}

async function shot(page, name) {
  if (!ARTIFACTS) return;
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `cases-${name}.png`), fullPage: true });
}

// Visible text without the quieter code parts (the area's code after its name).
const primaryText = (locator) => locator.evaluate((n) => {
  const copy = n.cloneNode(true);
  for (const c of copy.querySelectorAll('.area-code')) c.remove();
  return copy.textContent.trim();
});

test('the list and the incident show the village, people and departments by name, and how late an overdue item is', async () => {
  const { context, page, errors } = await open('staff');
  // The node's deadlines are days away; the list is shown as if the dispatched one were 3 h late.
  await context.route((url) => url.origin === base && url.pathname === '/api/v1/incidents', async (route) => {
    const response = await route.fetch();
    const body = await response.json();
    for (const i of body.incidents || []) {
      if (i.id === seeded.held) Object.assign(i, { due_state: 'overdue', due_ms: Date.now() - 3 * HOUR - 10 * 60000 });
    }
    return route.fulfill({ response, json: body });
  });
  await page.goto(`${base}/incidents`);
  const row = page.locator(`#incident-list li[data-id="${seeded.original}"]`);
  await row.waitFor();
  const meta = row.locator('.incident-meta');
  assert.match(await meta.innerText(), /王宅村/);
  assert.doesNotMatch(await meta.innerText(), /330723001001/, 'the code is not the visible text');
  assert.equal(await meta.locator('.area-name').getAttribute('title'), VILLAGE, 'the code is the tooltip');
  assert.match(await meta.innerText(), /王芳/);
  assert.doesNotMatch(await meta.innerText(), /grid\.wang/);
  const late = page.locator(`#incident-list li[data-id="${seeded.held}"]`);
  assert.equal(await late.locator('.badge.late').innerText(), '超期 3 小时');
  assert.equal(await late.locator('.badge.holder').innerText(), '水利办理');
  // The area filter offers the village by name.
  assert.equal(await page.locator(`#f-area option[value="${VILLAGE}"]`).textContent(), '王宅村');

  await page.goto(`${base}/incidents/${seeded.original}`);
  await page.locator('#timeline').waitFor();
  assert.equal(await primaryText(page.locator('#incident-area')), '王宅村');
  assert.equal(await page.locator('#incident-area .area-name').getAttribute('title'), VILLAGE);
  assert.equal(await page.locator('#incident-reporter').innerText(), '王芳');
  const timeline = page.locator('#timeline li');
  assert.match(await timeline.nth(0).innerText(), /已上报 · 王芳/, 'the report by its reporter\'s name');
  assert.match(await timeline.nth(1).innerText(), /受理 · 李明/, 'each step by its actor\'s name');
  assert.doesNotMatch(await page.locator('#timeline').innerText(), /grid\.wang|staff\.li/);
  // The place by name, the coordinates after it.
  assert.match(await page.locator('#incident-place').innerText(), /^王宅村东头河堤 28\.9, 119\.81$/);
  assert.deepEqual(errors, []);
  await context.close();
});

test('dispatch: assisting departments are check boxes without the lead, and the deadline is the category\'s default', async () => {
  const { context, page, errors } = await open('staff');
  await page.goto(`${base}/incidents/${seeded.original}`);
  await page.locator('#actions button[data-action="dispatch"]').click();
  const form = page.locator('form[data-action="dispatch"]');
  await form.waitFor();
  const boxes = form.locator('input[type="checkbox"][name="assist"]');
  const all = await boxes.count();
  assert.ok(all >= 7, `every department may assist before a lead is chosen (${all})`);
  await form.locator('select[name="department"]').selectOption('water');
  assert.equal(await boxes.count(), all - 1);
  assert.equal(await form.locator('input[name="assist"][value="water"]').count(), 0, 'the lead does not assist itself');
  // Ticked, then made the lead: gone, and not ticked when it becomes an assistant again.
  await form.locator('input[name="assist"][value="housing"]').check();
  await form.locator('select[name="department"]').selectOption('housing');
  assert.equal(await form.locator('input[name="assist"][value="housing"]').count(), 0);
  await form.locator('select[name="department"]').selectOption('water');
  assert.equal(await form.locator('input[name="assist"][value="housing"]').isChecked(), false);
  await form.locator('input[name="assist"][value="housing"]').check();
  await form.locator('input[name="assist"][value="police"]').check();
  // Labels stay with their boxes: the box lies inside its label.
  assert.equal(await form.locator('label.check:has(input[value="police"])').count(), 1);

  const deadline = await form.locator('input[type="datetime-local"]').inputValue();
  const expected = await page.evaluate((ms) => Date.now() + ms, SAFETY_RESOLVE_MS);
  const prefilled = await page.evaluate((v) => new Date(v).getTime(), deadline);
  assert.ok(Math.abs(prefilled - expected) < 2 * 60000, `deadline ${deadline} is now + 72 h`);
  assert.equal(await form.locator('.deadline-hint').innerText(), '按类别「安全隐患」默认 72 小时');
  await shot(page, 'dispatch');
  await form.locator('button[type="submit"]').click();
  await page.locator('.badge[data-state="dispatched"]').waitFor();
  assert.equal(await page.locator('#incident-lead').innerText(), '水利');
  assert.equal(await page.locator('#incident-assist').innerText(), '住房建设、公安');
  const deadlineMs = Math.abs(JSON.parse(await (await page.request.get(`${base}/api/v1/incidents/${seeded.original}`)).text()).deadline_ms - prefilled);
  assert.ok(deadlineMs < 60000, 'the deadline sent is the one shown');
  assert.match(await page.locator('#timeline li').last().innerText(), /派遣 · 李明.*\n?.*水利/);
  assert.deepEqual(errors, []);
  await context.close();
});

test('marking a duplicate: the original is offered first, and the two link to each other', async () => {
  const { context, page, errors } = await open('staff', { width: 1366, height: 900, phone: false });
  await page.goto(`${base}/incidents/${seeded.again}`);
  await page.locator('#actions button[data-action="duplicate"]').click();
  const form = page.locator('form[data-action="duplicate"]');
  const first = form.locator('label.candidate').first();
  await first.waitFor();
  assert.equal(await first.getAttribute('data-id'), seeded.original, 'same category and village first');
  assert.equal(await form.locator(`label.candidate[data-id="${seeded.again}"]`).count(), 0, 'never itself');
  assert.match(await first.innerText(), /河堤护栏倒塌[\s\S]*王宅村/);
  // The search box asks the node (q=).
  await form.locator('input[type="search"]').fill('垃圾');
  await form.locator('input[type="search"]').press('Enter');
  await form.locator(`label.candidate[data-id="${seeded.original}"]`).waitFor({ state: 'detached' });
  assert.equal(await form.locator(`label.candidate[data-id="${seeded.held}"]`).count(), 1);
  assert.equal(await page.locator('form[data-action="duplicate"]').count(), 1, 'Enter searched, it did not send the form');
  await form.locator('input[type="search"]').fill('');
  await form.locator('button', { hasText: '查询' }).click();
  await form.locator(`label.candidate[data-id="${seeded.original}"]`).click();
  await form.locator('button[type="submit"]').click();

  await page.locator('.badge[data-state="duplicate"]', { hasText: '重复件' }).waitFor();
  const link = page.locator('#duplicate-of-link');
  assert.equal(await link.getAttribute('href'), `/incidents/${seeded.original}`);
  await page.locator('#duplicate-of-link', { hasText: '河堤护栏倒塌' }).waitFor();
  assert.match(await page.locator('#duplicate-of').innerText(), /^重复于 河堤护栏倒塌$/);
  await shot(page, 'duplicate');
  await link.click();
  await page.locator('#incident-title', { hasText: '河堤护栏倒塌' }).waitFor();
  const back = page.locator(`#duplicates a[data-id="${seeded.again}"]`);
  await page.locator(`#duplicates a[data-id="${seeded.again}"]`, { hasText: '河堤护栏又倒了' }).waitFor();
  assert.equal(await back.getAttribute('href'), `/incidents/${seeded.again}`);
  // The list shows it with its state.
  await page.goto(`${base}/incidents`);
  await page.locator(`#incident-list li[data-id="${seeded.again}"] .badge[data-state="duplicate"]`, { hasText: '重复件' }).waitFor();
  assert.deepEqual(errors, []);
  await context.close();
});

test('the report form\'s map is plain with no tiles; the position button and a tap move one pin, and the tap is what is sent', async () => {
  const tiles = [];
  const { context, page, errors } = await open('worker', { geolocation: { latitude: 28.9012, longitude: 119.8123 } });
  page.on('request', (r) => { if (/\/tiles\/|\.png$/.test(new URL(r.url()).pathname) && !/vendor\/leaflet/.test(r.url())) tiles.push(r.url()); });
  await page.goto(`${base}/incidents/new`);
  await page.locator('#report-form').waitFor();
  // The village is chosen by name; a worker has exactly hers, already chosen.
  assert.equal(await page.locator('#r-area option:checked').textContent(), '王宅村');
  assert.equal(await page.locator('#r-area-code').innerText(), `区划代码 ${VILLAGE}`);
  const map = page.locator('#r-map');
  await page.locator('#r-map.leaflet-container.tn-map-plain').waitFor();
  assert.equal(await map.locator('.tn-map-note').innerText(), '无底图');
  await map.locator('.tn-map-name', { hasText: '王宅村' }).waitFor();
  await map.locator('.tn-map-nearby').first().waitFor();
  assert.ok(await map.locator('.tn-map-nearby').count() >= 1, 'open reports are ringed');
  assert.equal(await map.locator('img.leaflet-tile').count(), 0, 'no tiles');

  // The phone's position puts the pin down, named by the village it lies in.
  await page.locator('#r-locate').click();
  await page.locator('#r-location', { hasText: '28.9012, 119.8123' }).waitFor();
  assert.match(await page.locator('#r-location').innerText(), /^位于王宅村/);
  await map.locator('.leaflet-marker-icon').waitFor();
  const pinBefore = await map.locator('.leaflet-marker-icon').boundingBox();
  // A report this close is named before sending.
  await page.locator('#r-nearby a', { hasText: '河堤护栏倒塌' }).waitFor();

  // A tap moves the same pin and replaces the position.
  const box = await map.boundingBox();
  await map.click({ position: { x: Math.round(box.width * 0.25), y: Math.round(box.height * 0.3) } });
  await page.waitForFunction(() => !document.querySelector('#r-location').textContent.includes('28.9012'));
  assert.equal(await map.locator('.leaflet-marker-icon').count(), 1, 'one pin');
  const pinAfter = await map.locator('.leaflet-marker-icon').boundingBox();
  assert.ok(Math.abs(pinAfter.x - pinBefore.x) + Math.abs(pinAfter.y - pinBefore.y) > 20, 'the pin moved');
  const coords = /(-?\d+\.\d+), (-?\d+\.\d+)/.exec(await page.locator('#r-location').innerText());
  assert.ok(coords, 'the tapped position is shown');
  const [lat, lon] = [Number(coords[1]), Number(coords[2])];

  await page.locator('#r-category').selectOption('安全隐患');
  await page.locator('#r-title').fill('王宅村桥头路灯不亮');
  await shot(page, 'report-map');
  await page.locator('#r-submit').click();
  await page.waitForURL(/\/incidents\/[0-9a-f-]{36}$/);
  const id = new URL(page.url()).pathname.split('/').pop();
  const sent = JSON.parse(await (await page.request.get(`${base}/api/v1/incidents/${id}`)).text());
  assert.deepEqual(sent.location, { lat, lon }, 'the tapped place is the one submitted');
  assert.equal(sent.area, VILLAGE);
  assert.deepEqual(tiles, [], 'nothing asked for tiles');
  assert.deepEqual(errors, []);
  await context.close();
});

test('the list\'s map view loads the map only when asked, shows the filtered incidents as markers, and goes with the page', async () => {
  const { context, page, errors } = await open('staff', { width: 1366, height: 900, phone: false });
  await page.goto(`${base}/incidents`);
  await page.locator('#incident-list li').first().waitFor();
  const leafletLoaded = () => page.evaluate(() => performance.getEntriesByType('resource').some((e) => /leaflet/.test(e.name)));
  assert.equal(await leafletLoaded(), false, 'the list alone does not fetch the map');
  await page.locator('#show-map').click();
  await page.locator('#incident-map.tn-map-plain').waitFor();
  await page.locator('#incident-map .tn-map-point').first().waitFor();
  const markers = await page.locator('#incident-map .tn-map-point').count();
  assert.ok(markers >= 1, 'located incidents are markers');
  assert.equal(await page.locator('#show-map').getAttribute('aria-pressed'), 'true');
  assert.equal(await page.locator('#incident-list-view').isHidden(), true);
  // The filters apply to the map too: a category with no located incident leaves none.
  await page.locator('#f-category').selectOption('环境卫生');
  await page.locator('#incident-filters button[type="submit"]').click();
  await page.waitForFunction(() => document.querySelectorAll('#incident-map .tn-map-point').length === 0);
  await page.locator('#f-category').selectOption('');
  await page.locator('#incident-filters button[type="submit"]').click();
  await page.locator('#incident-map .tn-map-point').first().waitFor();
  // A marker's popup names the village and links to the incident.
  await page.locator('#incident-map .tn-map-point').first().click();
  await page.locator('.tn-map-popup', { hasText: '王宅村' }).waitFor();
  await shot(page, 'list-map');
  await page.locator('#show-list').click();
  await page.locator('#incident-list li').first().waitFor({ state: 'visible' });
  // Leaving the page releases the map.
  await page.locator('#show-map').click();
  await page.locator('#nav a[href="/indicators"]').click();
  await page.locator('#indicators .tile').first().waitFor();
  assert.equal(await page.locator('.leaflet-container').count(), 0);
  // The indicators name the village and count the duplicate apart.
  assert.match(await page.locator('#ind-area-table tbody').innerText(), /王宅村/);
  assert.equal(await page.locator('.tile[data-measure="indicators.duplicates"] strong').innerText(), '1');
  assert.deepEqual(errors, []);
  await context.close();
});

test('users: the area is chosen by name (or typed), the department from the list and only for a department handler', async () => {
  const { context, page, errors } = await open('admin');
  await page.goto(`${base}/users`);
  await page.locator('#users-table').waitFor();
  // The table: display name, area by name with its code after it, department by name.
  const wang = page.locator('#users-table tr[data-username="grid.wang"]');
  assert.match(await wang.innerText(), /王芳[\s\S]*王宅村 330723001001/);
  const form = page.locator('#user-add-form');
  assert.equal(await page.locator('#user-area option:checked').textContent(), '熟溪街道');
  assert.equal(await page.locator('#user-department').isHidden(), true, 'no department for a grid worker');
  await page.locator('#user-role').selectOption('dept_handler');
  assert.equal(await page.locator('#user-department').isVisible(), true);
  assert.equal(await page.locator('#user-department').evaluate((s) => s.required), true);
  assert.equal(await page.locator('#user-department option[value="water"]').textContent(), '水利');
  // A code the directory does not name can still be typed.
  await page.locator('#user-area').selectOption('__other');
  await page.locator('#user-area-other').waitFor();
  await page.locator('#user-area').selectOption(VILLAGE);
  assert.equal(await page.locator('#user-area-other').isHidden(), true);
  assert.equal(await page.locator('#user-area-code').innerText(), `区划代码 ${VILLAGE}`);
  // A department handler works for a township: the node's refusal is shown, in words.
  await page.locator('#user-username').fill('water.sun');
  await page.locator('#user-department').selectOption('water');
  await page.locator('#user-password').fill('Water-Handler-2026');
  await form.locator('button[type="submit"]').click();
  await form.locator('.error', { hasText: '部门处置人员' }).waitFor();
  await page.locator('#user-area').selectOption('330723001');
  await page.locator('#user-display-name').fill('孙水利');
  await form.locator('button[type="submit"]').click();
  const row = page.locator('#users-table tr[data-username="water.sun"]');
  await row.waitFor();
  assert.match(await row.innerText(), /孙水利[\s\S]*熟溪街道 330723001[\s\S]*水利/);
  assert.deepEqual(errors, []);
  await context.close();
});
