// Browser end-to-end test of the UI shell in Debian's headless Chromium: the real binary serves it,
// the page renders in Chinese first, switches to English, navigates without reloads, and deep links
// work. Run by tests/run.sh; E2E_NODE_BIN names the binary.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { FROM_DISK, serveUiFromDisk } from './ui-from-disk.mjs';
import { serveNode } from './node-kit.mjs';

const BIN = process.env.E2E_NODE_BIN;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
let dir;
let node;
let base;
let browser;
let mqttPort;
const MQTT_SECRET = 'e2e-gauge-secret-2026';
const ADMIN_PASSWORD = 'E2e-Admin-Pass-2026';
const PEOPLE_PASSWORD = 'E2e-People-Pass-2026';

// A small valid PNG (an 8x8 gradient), enough for an upload and a thumbnail.
const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAbElEQVR4nBXNQRUAUQhCUZOYhCQmeUlIQhISzR+XXA7ODDtouIHBQ4YOM8suWm5h8ZKl+0CskDiBsIioHhx76LiDw0eO3oN/4FVf+J8h0PduzBqZ8x/bxNQPwgaFy192SGgelC0q13/CJaXlA+odUoHdRJQGAAAAAElFTkSuQmCC', 'base64');

async function signIn(page, username, password) {
  await page.goto(base + '/login');
  await page.locator('#login-username').fill(username);
  await page.locator('#login-password').fill(password);
  await page.locator('#login-form button[type=submit]').click();
}

// A port nothing listens on now, for the node's embedded MQTT broker.
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// One QoS 1 reading from the MQTT gauge, through mosquitto's own client, as a field sensor sends it.
function publishLevel(value, ts) {
  execFileSync('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(mqttPort), '-u', 'wl-mqtt', '-P', MQTT_SECRET,
    '-i', 'wl-mqtt', '-q', '1', '-t', 'sensors/wl-mqtt', '-m', JSON.stringify({ ts, water_level: value })]);
}


const startNode = (dataDir) => serveNode(BIN, ['--data-dir', dataDir],
  { PATH: process.env.PATH, RUST_LOG: 'info', TOWNSHIP_HTTP__HTTPS_LISTEN: '127.0.0.1:0' });


before(async () => {
  assert.ok(BIN, 'set E2E_NODE_BIN to the township-node binary');
  dir = mkdtempSync(join(tmpdir(), 'township-e2e-'));
  writeFileSync(join(dir, 'admin.pw'), `${ADMIN_PASSWORD}\n`);
  execFileSync(BIN, ['init', '--data-dir', join(dir, 'node'), '--area', '330723001', '--name', '熟溪街道', '--role', 'township',
    '--admin-password-file', join(dir, 'admin.pw')], { env: { PATH: process.env.PATH, TOWNSHIP_HTTP__HTTPS_LISTEN: '127.0.0.1:0' } });
  writeFileSync(join(dir, 'people.pw'), `${PEOPLE_PASSWORD}\n`);
  for (const [username, role, area, dept] of [
    ['grid.wang', 'grid_worker', '330723001001', null],
    ['staff.li', 'township_staff', '330723001', null],
    ['water.zhao', 'dept_handler', '330723001', 'water'],
  ]) {
    const args = ['user', 'add', '--data-dir', join(dir, 'node'), '--username', username, '--role', role, '--area', area,
      '--password-file', join(dir, 'people.pw')];
    if (dept) args.push('--department', dept);
    execFileSync(BIN, args, { env: { PATH: process.env.PATH, TOWNSHIP_HTTP__HTTPS_LISTEN: '127.0.0.1:0' } });
  }
  // A simulated river station reporting every second, so the sensors page has something live to show,
  // and a river gauge that reports over MQTT to the embedded broker, for the storm.
  mqttPort = await freePort();
  writeFileSync(join(dir, 'node', 'township-node.toml'), [
    '[mqtt]',
    `listen = "127.0.0.1:${mqttPort}"`,
    '',
    '[[devices]]',
    'id = "wl-mqtt"',
    'name = "熟溪水位站"',
    'area = "330723001"',
    'driver = "mqtt"',
    `password = "${MQTT_SECRET}"`,
    'interval = "1m"',
    'points = [ { metric = "water_level", unit = "m", min = 0.0, max = 20.0 } ]',
    '',
    '[[pa.outputs]]',
    'id = "amp"',
    'kind = "audio_command"',
    `command = ["sh", "-c", "cp \\"$1\\" '${join(dir, 'amp')}'-$(date +%s%N).wav; sleep 4", "sh", "{file}"]`,
    '',
    '[[pa.outputs]]',
    'id = "monitor"',
    'kind = "audio_command"',
    `command = ["sh", "-c", "cp \\"$1\\" '${join(dir, 'monitor')}'-$(date +%s%N).wav", "sh", "{file}"]`,
    'test = true',
    '',
    '[[pa.zones]]',
    'id = "wangzhai"',
    'name = "王宅村"',
    'area = "330723001001"',
    'outputs = ["amp", "monitor"]',
    '',
    '[[devices]]',
    'id = "sim-river"',
    'name = "模拟水位站"',
    'area = "330723001"',
    'driver = "simulator"',
    'profile = "river"',
    'interval = "1s"',
    '',
  ].join('\n'));
  ({ child: node, base } = await startNode(join(dir, 'node')));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  // E2E_UI_FROM_DISK=1: every context (browser.newPage makes one through newContext too) serves ui/
  // from disk, with service workers blocked so the worker's precache of the binary's copy stays out.
  if (FROM_DISK) {
    const newContext = browser.newContext.bind(browser);
    browser.newContext = async (options = {}) => {
      const context = await newContext({ ...options, serviceWorkers: 'block' });
      await serveUiFromDisk(context, base);
      return context;
    };
  }
});

after(async () => {
  await browser?.close();
  node?.kill('SIGTERM');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('renders the overview in Chinese first with the node identity', async () => {
  const page = await browser.newPage({ viewport: { width: 360, height: 640 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // Chromium logs every 4xx as a console error; a 401 from the session probe just means "signed out".
  page.on('console', (m) => { if (m.type() === 'error' && !/status of 401/.test(m.text())) errors.push(m.text()); });
  await page.goto(base + '/node');
  await page.getByRole('heading', { name: '节点概览' }).waitFor();
  assert.equal(await page.locator('html').getAttribute('lang'), 'zh-CN');
  assert.equal(await page.locator('#node-name').textContent(), '熟溪街道');
  await page.getByText('330723001', { exact: true }).waitFor();
  await page.locator('.badge.ok').waitFor();
  assert.deepEqual(errors, [], 'no script errors or CSP violations');
  await page.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'overview-zh.png') });
  await page.close();
});

test('switches to English and remembers the choice', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base + '/node');
  await page.getByRole('heading', { name: '节点概览' }).waitFor();
  await page.locator('#lang-toggle').click();
  await page.getByRole('heading', { name: 'Node overview' }).waitFor();
  assert.equal(await page.locator('html').getAttribute('lang'), 'en');
  assert.equal(await page.locator('#nav a[href="/incidents"]').textContent(), 'Incidents');
  await page.reload();
  await page.getByRole('heading', { name: 'Node overview' }).waitFor();
  await page.locator('#lang-toggle').click();
  await page.getByRole('heading', { name: '节点概览' }).waitFor();
  await context.close();
});

test('navigates without reloading and deep links load the shell', async () => {
  const page = await browser.newPage();
  await signIn(page, 'admin', ADMIN_PASSWORD);
  await page.getByRole('heading', { name: '我的工作' }).waitFor();
  await page.evaluate(() => { window.__marker = 'same-document'; });
  await page.locator('#nav a[href="/sensors"]').click();
  await page.getByRole('heading', { name: '监测站点' }).waitFor();
  assert.equal(new URL(page.url()).pathname, '/sensors');
  assert.equal(await page.evaluate(() => window.__marker), 'same-document', 'no full reload');
  assert.equal(await page.locator('#nav a[href="/sensors"]').getAttribute('aria-current'), 'page');
  await page.goBack();
  await page.getByRole('heading', { name: '我的工作' }).waitFor();

  await page.goto(base + '/incidents/some-id/deep');
  await page.getByRole('heading', { name: '页面不存在' }).waitFor();
  await page.goto(base + '/audit');
  await page.getByRole('heading', { name: '审计日志' }).waitFor();
  await page.close();
});

test('protected pages ask for sign-in and return afterwards; wrong passwords are refused', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base + '/users');
  await page.getByRole('heading', { name: '登录' }).waitFor();
  assert.equal(new URL(page.url()).searchParams.get('next'), '/users');
  await page.locator('#login-username').fill('admin');
  await page.locator('#login-password').fill('not-the-password');
  await page.locator('#login-form button[type=submit]').click();
  await page.getByText('用户名或密码错误。').waitFor();
  await page.locator('#login-password').fill(ADMIN_PASSWORD);
  await page.locator('#login-form button[type=submit]').click();
  await page.getByRole('heading', { name: '用户管理' }).waitFor();
  assert.match(await page.locator('#user-name').textContent(), /管理员/);
  await context.close();
});

test('an admin adds a grid worker, sees it in the audit log, and signs out', async () => {
  const context = await browser.newContext({ viewport: { width: 360, height: 740 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await signIn(page, 'admin', ADMIN_PASSWORD);
  await page.getByRole('heading', { name: '我的工作' }).waitFor();
  await page.locator('#nav a[href="/users"]').click();
  await page.getByRole('heading', { name: '用户管理' }).waitFor();
  await page.locator('#user-username').fill('wang.xiaoming');
  await page.locator('#user-display-name').fill('王小明');
  await page.locator('#user-role').selectOption('grid_worker');
  await page.locator('#user-area').fill('330723001001');
  await page.locator('#user-password').fill('Grid-Worker-2026');
  await page.locator('#user-add-form button[type=submit]').click();
  await page.locator('#users-table tr[data-username="wang.xiaoming"]').waitFor();
  await page.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'users-zh.png'), fullPage: true });

  // A bad area is refused with the server's message, and nothing is added.
  await page.locator('#user-username').fill('li.si');
  await page.locator('#user-area').fill('330799001001');
  await page.locator('#user-password').fill('Grid-Worker-2026');
  await page.locator('#user-add-form button[type=submit]').click();
  await page.locator('#user-add-form .error').waitFor();
  assert.equal(await page.locator('#users-table tr[data-username="li.si"]').count(), 0);

  await page.locator('#nav a[href="/audit"]').click();
  await page.getByRole('heading', { name: '审计日志' }).waitFor();
  await page.locator('#audit-table td', { hasText: 'record.create' }).first().waitFor();
  // On a phone the filters are folded away behind "筛选".
  await page.locator('#audit-filters-box summary', { hasText: '筛选' }).click();
  await page.locator('#audit-action').fill('auth.login');
  await page.locator('#audit-filters button[type=submit]').click();
  await page.waitForFunction(() => {
    const cells = [...document.querySelectorAll('#audit-table tbody tr td:nth-child(4)')];
    return cells.length > 0 && cells.every((td) => td.textContent.startsWith('auth.login'));
  });

  await page.locator('#nav a[href="/nodes"]').click();
  await page.getByRole('heading', { name: '下级节点' }).waitFor();
  await page.getByText('还没有登记下级节点。').waitFor();
  assert.equal(await page.locator('#link-state').textContent(), '本地运行', 'no upstream configured');

  // The county overview, beside the nodes in the menu: its four sections load on their own, with no
  // node enrolled the nodes section says so, and the incidents section says which period it covers.
  await page.locator('#nav a[href="/county"]').click();
  await page.getByRole('heading', { name: '数字驾驶舱' }).waitFor();
  await page.locator('#cockpit[data-ready]').waitFor();
  await page.locator('#cockpit-nodes-none', { hasText: '还没有登记下级节点。' }).waitFor();
  assert.match(await page.locator('#cockpit-period').textContent(), /^近 30 天（\d{4}-\d{2}-\d{2} 起）/);
  for (const id of ['cockpit-nodes', 'cockpit-incidents', 'cockpit-stations', 'cockpit-warnings']) {
    assert.equal(await page.locator(`#${id}`).getAttribute('data-state'), 'ok', `${id} loaded`);
  }

  await page.locator('#logout').click();
  await page.getByRole('heading', { name: '登录' }).waitFor();
  await page.goto(base + '/audit');
  await page.getByRole('heading', { name: '登录' }).waitFor();
  assert.deepEqual(errors, []);

  // The new grid worker can sign in and does not see account pages.
  await signIn(page, 'wang.xiaoming', 'Grid-Worker-2026');
  await page.getByRole('heading', { name: '我的工作' }).waitFor();
  assert.equal(await page.locator('#nav a[href="/users"]').isHidden(), true);
  assert.equal(await page.locator('#nav a[href="/incidents"]').isVisible(), true);
  await context.close();
});

test('an incident goes round the whole loop in the browser: report with a photo, accept, dispatch, handle, verify', async () => {
  const ctx = await browser.newContext({ viewport: { width: 375, height: 800 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));

  // The grid worker reports from a phone, with a photo and a typed place (no GPS over plain HTTP).
  await signIn(page, 'grid.wang', PEOPLE_PASSWORD);
  await page.getByRole('heading', { name: '我的工作' }).waitFor();
  await page.goto(base + '/incidents/new');
  await page.locator('#r-category').selectOption('安全隐患');
  await page.locator('#r-title').fill('桥头护栏断裂');
  await page.locator('#r-description').fill('熟溪桥东侧护栏断了一段，小孩容易掉下去。');
  await page.locator('#r-place').fill('熟溪桥东侧');
  await page.locator('#r-photos').setInputFiles({ name: 'IMG_1001.png', mimeType: 'image/png', buffer: PNG });
  await page.locator('#report-form button[type=submit]').click();
  await page.locator('#incident-title', { hasText: '桥头护栏断裂' }).waitFor();
  await page.locator('#photos img').waitFor();
  await page.waitForFunction(() => document.querySelector('#photos img').complete && document.querySelector('#photos img').naturalWidth > 0);
  const url = page.url();
  await page.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'incident-reported.png'), fullPage: true });
  await page.locator('#logout').click();

  // Township staff accept and dispatch it to water, with housing assisting.
  await signIn(page, 'staff.li', PEOPLE_PASSWORD);
  await page.getByRole('heading', { name: '我的工作' }).waitFor();
  await page.goto(base + '/tasks');
  await page.locator('#incident-list li', { hasText: '桥头护栏断裂' }).click();
  await page.locator('#actions button[data-action="accept"]').click();
  await page.locator('form[data-action="accept"] button[type=submit]').click();
  await page.locator('#actions button[data-action="dispatch"]').click();
  await page.locator('form[data-action="dispatch"] select[name="department"]').selectOption('water');
  await page.locator('form[data-action="dispatch"] input[name="assist"][value="housing"]').check();
  await page.locator('form[data-action="dispatch"] button[type=submit]').click();
  await page.locator('.badge[data-state="dispatched"]').waitFor();
  await page.locator('#logout').click();

  // The water department handles it.
  await signIn(page, 'water.zhao', PEOPLE_PASSWORD);
  await page.getByRole('heading', { name: '我的工作' }).waitFor();
  await page.goto(url);
  await page.locator('#actions button[data-action="start"]').click();
  await page.locator('form[data-action="start"] button[type=submit]').click();
  await page.locator('#actions button[data-action="resolve"]').click();
  await page.locator('form[data-action="resolve"] textarea').fill('已焊接修复护栏');
  await page.locator('form[data-action="resolve"] button[type=submit]').click();
  await page.locator('.badge[data-state="resolved"]').waitFor();
  assert.equal(await page.locator('#actions button[data-action="verify"]').count(), 0, 'handlers do not verify');
  await page.locator('#logout').click();

  // The reporter verifies and rates; search finds it; indicators count it.
  await signIn(page, 'grid.wang', PEOPLE_PASSWORD);
  await page.getByRole('heading', { name: '我的工作' }).waitFor();
  await page.goto(url);
  await page.locator('#actions button[data-action="verify"]').click();
  await page.locator('form[data-action="verify"] button[type=submit]').click();
  await page.locator('.badge[data-state="closed"]').waitFor();
  await page.locator('#rating-form button[type=submit]').click();
  await page.locator('#rating-form').waitFor({ state: 'detached' });
  // Rating re-renders the page: cleared first, filled again once the incident has reloaded.
  await page.locator('#timeline li').nth(5).waitFor();
  assert.equal(await page.locator('#timeline li').count(), 6);
  await page.goto(base + '/incidents');
  await page.locator('#incident-filters-box summary', { hasText: '筛选' }).click();
  await page.locator('#f-q').fill('护栏');
  await page.locator('#incident-filters button[type=submit]').click();
  await page.locator('#incident-list li', { hasText: '桥头护栏断裂' }).waitFor();
  await page.goto(base + '/indicators');
  await page.locator('.tile strong').first().waitFor();
  await page.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'indicators.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('the sensors page shows a simulated station live, charts it, and follows the language', async () => {
  const ctx = await browser.newContext({ viewport: { width: 360, height: 740 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error' && !/status of 401/.test(m.text())) errors.push(m.text()); });

  // Township staff: not an account admin, and the station lies inside their area.
  await signIn(page, 'staff.li', PEOPLE_PASSWORD);
  await page.getByRole('heading', { name: '我的工作' }).waitFor();
  await page.evaluate(() => { window.__marker = 'same-document'; });
  await page.locator('#nav a[href="/sensors"]').click();
  await page.getByRole('heading', { name: '监测站点' }).waitFor();
  const station = page.locator('.station[data-device="sim-river"]');
  await station.locator('.station-name', { hasText: '模拟水位站' }).waitFor();
  await station.locator('.badge.status-online', { hasText: '在线' }).waitFor();
  assert.match(await station.locator('.station-meta').textContent(), /330723001 · 模拟器/);
  const level = station.locator('li[data-metric="water_level"]');
  await level.locator('.metric-value strong').waitFor();
  assert.match(await level.locator('.metric-value strong').textContent(), /^-?\d+(\.\d+)?$/);
  assert.equal(await level.locator('.metric-unit').textContent(), 'm');
  assert.match(await level.textContent(), /水位\s*\(water_level\)/);

  // A reading arrives over the event stream and the value's time moves on, without a reload.
  const shown = await level.getAttribute('data-t');
  await page.waitForFunction((before) => {
    const li = document.querySelector('.station[data-device="sim-river"] li[data-metric="water_level"]');
    return li && li.dataset.t && li.dataset.t !== before;
  }, shown, { timeout: 15000 });
  assert.equal(await page.evaluate(() => window.__marker), 'same-document', 'no full reload');
  await page.locator('#sensors-live[data-state="live"]').waitFor();
  await page.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'sensors-zh.png'), fullPage: true });

  // Tapping the metric opens the station's charts.
  await level.locator('a').click();
  await page.getByRole('heading', { name: '模拟水位站' }).waitFor();
  assert.equal(new URL(page.url()).pathname, '/sensors/sim-river');
  const chart = page.locator('.chart-card[data-metric="water_level"]');
  await chart.locator('.uplot canvas').waitFor();
  const box = await chart.locator('.uplot').boundingBox();
  const card = await chart.boundingBox();
  assert.ok(box.width > 200 && box.width <= card.width, `chart fits its card: ${box.width} in ${card.width}`);
  assert.equal(await page.locator('.range-picker button[aria-pressed="true"]').textContent(), '24 小时');
  await page.locator('.chart-card[data-metric="battery"] .uplot canvas').waitFor();
  await page.locator('#station-errors').getByText('没有通信错误。').waitFor();

  // The CSV link covers the chosen range and downloads with this session.
  await page.locator('.range-picker button[data-range="1h"]').click();
  await page.locator('.range-picker button[data-range="1h"][aria-pressed="true"]').waitFor();
  await chart.locator('.uplot canvas').waitFor();
  assert.equal(new URL(page.url()).searchParams.get('range'), '1h');
  const href = await page.locator('#sensor-csv').getAttribute('href');
  assert.match(href, /^\/api\/v1\/sensors\/sim-river\/readings\.csv\?from=\d+/);
  const csv = await ctx.request.get(base + href);
  assert.equal(csv.status(), 200);
  assert.match(await csv.text(), /sim-river,water_level,/);
  await page.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'sensor-chart-zh.png'), fullPage: true });

  // English: labels follow, the chosen range survives the re-render.
  await page.locator('#lang-toggle').click();
  await page.getByText('Download CSV').waitFor();
  await page.locator('.badge.status-online', { hasText: 'Online' }).waitFor();
  assert.equal(await page.locator('.range-picker button[aria-pressed="true"]').textContent(), '1 h');
  await chart.getByText('Water level').waitFor();
  await chart.locator('.uplot canvas').waitFor();
  await page.locator('#sensors-back').click();
  await page.getByRole('heading', { name: 'Monitoring stations' }).waitFor();
  await station.locator('.badge.status-online', { hasText: 'Online' }).waitFor();
  assert.match(await station.locator('.station-meta').textContent(), /Simulator · Last report/);
  assert.equal(await page.evaluate(() => window.__marker), 'same-document', 'no full reload');
  await page.locator('#lang-toggle').click();
  await page.getByRole('heading', { name: '监测站点' }).waitFor();
  await page.locator('#logout').click();

  // A grid worker's village holds no station: the page works and says so.
  await signIn(page, 'grid.wang', PEOPLE_PASSWORD);
  await page.getByRole('heading', { name: '我的工作' }).waitFor();
  await page.locator('#nav a[href="/sensors"]').click();
  await page.locator('#sensors-empty').waitFor();
  assert.equal(await page.locator('.station').count(), 0);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('staff issue an orange warning, everyone in the area sees the banner, and cancelling removes it', async () => {
  const staffContext = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const staff = await staffContext.newPage();
  const errors = [];
  staff.on('pageerror', (e) => errors.push(e.message));
  await signIn(staff, 'staff.li', PEOPLE_PASSWORD);
  await staff.locator('#nav a[href="/warnings"]').click();
  await staff.getByRole('heading', { name: '风险预警' }).waitFor();
  await staff.locator('#warnings-none').waitFor();
  await staff.locator('#w-level').selectOption('orange');
  await staff.locator('#w-event').selectOption('rainstorm');
  await staff.locator('#w-headline').fill('熟溪街道暴雨橙色预警');
  await staff.locator('#w-instruction').fill('沿河低洼地带人员立即转移。');
  await staff.locator('#warning-form button[type=submit]').click();
  await staff.locator('#warning-detail').waitFor();
  await staff.getByText('橙色（II级） · 已发布').waitFor();
  await staff.locator('#warning-detail a[href$="/cap"]').waitFor();
  // The banner says the level in words, not only in colour.
  await staff.locator('#warning-banner:not([hidden])', { hasText: '橙色（II级）预警：熟溪街道暴雨橙色预警' }).waitFor();

  const phoneContext = await browser.newContext({ viewport: { width: 360, height: 740 } });
  const phone = await phoneContext.newPage();
  await signIn(phone, 'grid.wang', PEOPLE_PASSWORD);
  await phone.locator('#warning-banner:not([hidden])', { hasText: '熟溪街道暴雨橙色预警' }).waitFor();
  await phone.locator('#warning-banner a').click();
  await phone.locator('#warning-detail').waitFor();
  assert.equal(await phone.locator('#warning-actions').count(), 0, 'a grid worker has no actions');
  await phone.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'warning-phone-zh.png'), fullPage: true });

  staff.once('dialog', (d) => d.accept());
  await staff.locator('#warning-actions button.danger').click();
  await staff.getByText('橙色（II级） · 已解除').waitFor();
  // The phone hears the cancel as it happens (warning events), without reloading or navigating: the
  // fallback poll is five minutes away.
  await phone.waitForFunction(() => document.getElementById('warning-banner').hidden, null, { timeout: 5000 });
  await phone.locator('#nav a[href="/warnings"]').click();
  await phone.locator('#warnings-none').waitFor();
  assert.deepEqual(errors, []);
  await staffContext.close();
  await phoneContext.close();
});

test('staff write a rule in the editor, try it on stored readings, and the live readings raise a warning with a banner', async () => {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await signIn(page, 'staff.li', PEOPLE_PASSWORD);
  await page.locator('#nav a[href="/rules"]').click();
  await page.getByRole('heading', { name: '预警规则' }).first().waitFor();
  await page.locator('#r-name').fill('模拟水位超警');
  await page.locator('#r-device').selectOption('sim-river');
  await page.locator('#r-metric').fill('water_level');
  await page.locator('#r-level-red').fill('1.0');
  await page.locator('#rule-form fieldset input[type=checkbox]').nth(3).check();
  // The simulated river has been reporting about 2 m every second: the try-out shows red.
  await page.locator('#rule-test').click();
  await page.locator('#rule-preview li', { hasText: '红色（I级）' }).first().waitFor();
  await page.locator('#rule-form button[type=submit]').click();
  await page.locator('#rules-list li', { hasText: '模拟水位超警' }).waitFor();
  // The watcher picks the rule up within a second and the next live reading raises and issues a red
  // warning: the warnings page lists it, and the banner says so on every page.
  const deadline = Date.now() + 20000;
  for (;;) {
    await page.locator('#nav a[href="/warnings"]').click();
    await page.getByRole('heading', { name: '风险预警' }).waitFor();
    if (await page.locator('#warnings-active li', { hasText: '模拟水位超警' }).count()) break;
    assert.ok(Date.now() < deadline, 'no warning was raised by the rule');
    await page.waitForTimeout(300);
  }
  await page.locator('#warning-banner:not([hidden])', { hasText: '红色（I级）预警' }).waitFor();
  // The station the rule watches is marked with the level on the sensors page.
  await page.locator('#nav a[href="/sensors"]').click();
  await page.locator('#station-list li[data-device="sim-river"] .warning-badge', { hasText: '红色（I级）' }).waitFor();
  await page.locator('#warning-banner a').click();
  await page.locator('#warning-detail', { hasText: '模拟水位超警红色预警' }).waitFor();
  await page.getByText('规则触发').waitFor();
  await page.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'rule-warning-zh.png'), fullPage: true });
  // The triggering reading on a small chart of the river with the rule's level line.
  await page.locator('#warning-chart svg polyline.series').waitFor({ state: 'attached' });
  await page.locator('#warning-chart svg line.level-red').waitFor({ state: 'attached' });
  assert.ok(await page.locator('#warning-chart svg circle.trigger').count() >= 1);
  // Clean up for later tests: cancel the warning and delete the rule.
  page.once('dialog', (d) => d.accept());
  await page.locator('#warning-actions button.danger').click();
  await page.getByText('已解除').first().waitFor();
  await page.locator('#nav a[href="/rules"]').click();
  page.once('dialog', (d) => d.accept());
  await page.locator('#rules-list li', { hasText: '模拟水位超警' }).locator('button.danger').click();
  await page.locator('#rules-none').waitFor();
  assert.deepEqual(errors, []);
  await context.close();
});

test('a storm through MQTT readings raises a yellow then an orange warning, the banner follows live, and it clears', async () => {
  const context = await browser.newContext({ viewport: { width: 360, height: 740 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await signIn(page, 'staff.li', PEOPLE_PASSWORD);
  await page.locator('#nav a[href="/warnings"]').click();
  await page.getByRole('heading', { name: '风险预警' }).waitFor();
  // The river rule, as township staff would set it (through the API with the page's own session).
  const rule = await page.evaluate(async () => {
    const session = await (await fetch('/api/v1/session')).json();
    const r = await fetch('/api/v1/rules', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-csrf-token': session.csrf_token },
      body: JSON.stringify({ name: '熟溪MQTT水位', area: '330723001', device: 'wl-mqtt', metric: 'water_level',
        kind: 'threshold', op: '>=', levels: { yellow: 3.5, orange: 4.0, red: 4.5 }, hysteresis: 0.1,
        event: 'flood', auto_issue: ['red', 'orange'] }),
    });
    return { status: r.status, body: await r.json() };
  });
  assert.equal(rule.status, 201, JSON.stringify(rule.body));
  // The watcher loads a new rule within a second; the gauge reports until the rule has seen it rise.
  let ts = Date.now() - 60_000;
  const deadline = Date.now() + 20000;
  for (;;) {
    ts += 1000;
    publishLevel(3.6, ts);
    if (await page.locator('#warnings-active li', { hasText: '熟溪MQTT水位' }).count()) break;
    assert.ok(Date.now() < deadline, 'the MQTT readings raised no warning');
    await page.waitForTimeout(300);
  }
  // Yellow is raised, not issued: listed on the page (which reloads on the warning event) but no banner.
  await page.locator('#warnings-active li', { hasText: '黄色（III级）' }).waitFor();
  // Raised, not issued: the card says so (the banner is only ever for orange and red).
  await page.locator('#warnings-active li', { hasText: '黄色（III级） · 待发布' }).waitFor();
  assert.ok(await page.locator('#warning-banner').isHidden());
  // The river keeps rising: orange, issued by the rule; the banner appears without reloading.
  ts += 1000;
  publishLevel(4.1, ts);
  await page.locator('#warning-banner:not([hidden])', { hasText: '橙色（II级）预警' }).waitFor({ timeout: 10000 });
  await page.locator('#warnings-active li', { hasText: '橙色（II级）' }).waitFor();
  await page.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'storm-mqtt-phone-zh.png'), fullPage: true });
  // The water falls below every band: all clear, the banner goes, the warning moves to the history.
  ts += 1000;
  publishLevel(2.9, ts);
  await page.waitForFunction(() => document.getElementById('warning-banner').hidden, null, { timeout: 10000 });
  await page.locator('#warnings-active li', { hasText: '熟溪MQTT水位' }).waitFor({ state: 'detached' });
  await page.locator('.warning-list.past li', { hasText: '熟溪MQTT水位' }).waitFor();
  // Clean up for later runs: delete the rule.
  const deleted = await page.evaluate(async (id) => {
    const session = await (await fetch('/api/v1/session')).json();
    return (await fetch(`/api/v1/rules/${id}`, { method: 'DELETE', headers: { 'x-csrf-token': session.csrf_token } })).status;
  }, rule.body.id);
  assert.ok(deleted < 300, `deleting the rule answered ${deleted}`);
  assert.deepEqual(errors, []);
  await context.close();
});

test('staff put a message on the loudspeakers: live asks for the zone count, one click stops it, a test reaches only the monitor', async () => {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const staff = await context.newPage();
  const errors = [];
  staff.on('pageerror', (e) => errors.push(e.message));
  await signIn(staff, 'staff.li', PEOPLE_PASSWORD);
  await staff.locator('#nav a[href="/broadcasts"]').click();
  await staff.locator('#broadcast-form').waitFor();
  await staff.locator('#b-text').fill('王宅村村民请注意：明天上午九点停电检修。');
  await staff.locator('input[name=zone][value=wangzhai]').check();
  await staff.locator('#b-level').selectOption('blue');
  await staff.locator('#b-mode-live').check();
  await staff.locator('#b-submit').click();
  // A live broadcast is sent only once the number of zones is typed.
  await staff.locator('#b-confirm').waitFor();
  const ok = staff.locator('#b-confirm button[type=submit]');
  assert.ok(await ok.isDisabled(), 'confirm waits for the zone count');
  await staff.locator('#b-confirm-count').fill('2');
  assert.ok(await ok.isDisabled(), 'a wrong count does not confirm');
  await staff.locator('#b-confirm-count').fill('1');
  await ok.click();
  await staff.locator('#broadcast-detail').waitFor();
  await staff.locator('#broadcast-receipts tr[data-output="amp"][data-state="started"]').waitFor({ timeout: 20000 });
  await staff.locator('#broadcast-stop').click();
  await staff.locator('#broadcast-receipts tr[data-output="amp"][data-state="stopped"]').waitFor({ timeout: 10000 });
  await staff.locator('#broadcast-state', { hasText: '已停止' }).waitFor();

  // A test: its own look and a plain confirmation; only the monitor output plays it.
  await staff.locator('#nav a[href="/broadcasts"]').click();
  await staff.locator('#broadcast-form').waitFor();
  await staff.locator('#b-mode-test').check();
  await staff.locator('#b-text').fill('应急广播系统测试。');
  await staff.locator('input[name=zone][value=wangzhai]').check();
  assert.match(await staff.locator('#b-submit').innerText(), /测试/);
  await staff.locator('#b-submit').click();
  await staff.locator('#b-confirm button[type=submit]').click();
  await staff.locator('#broadcast-detail').waitFor();
  await staff.locator('#broadcast-receipts tr[data-output="monitor"][data-state="finished"]').waitFor({ timeout: 20000 });
  assert.equal(await staff.locator('#broadcast-receipts tr[data-output="amp"]').count(), 0, 'a test reached a live output');
  await staff.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'broadcast-test-zh.png'), fullPage: true });

  // A grid worker follows broadcasts but cannot order one.
  const phoneContext = await browser.newContext({ viewport: { width: 360, height: 740 } });
  const phone = await phoneContext.newPage();
  await signIn(phone, 'grid.wang', PEOPLE_PASSWORD);
  await phone.locator('#nav a[href="/broadcasts"]').click();
  await phone.locator('#broadcasts-history .broadcast-card').first().waitFor();
  assert.equal(await phone.locator('#broadcast-form').count(), 0);
  assert.deepEqual(errors, []);
  await context.close();
  await phoneContext.close();
});
