// Layout and accessibility of every page, in Debian's headless Chromium: for phones (360 and 390 px)
// and a desktop (1366 × 768), in Chinese and English, signed in as an admin and as a grid worker, each
// page the menu offers plus the report form and an incident (the admin's with its dispatch form open,
// the grid worker's closed one with its rating form) is checked for
// - no sideways scrolling: the document is no wider than the viewport, and no visible element reaches
//   past its edges, unless it sits inside an element that scrolls or clips sideways on purpose (the
//   menu, a table's wrapper), which must then itself fit;
// - no label over another label or over a control it does not belong to, no control over another,
//   and every label right above or beside its own control;
// - its own window title ("<page> · 基层治理节点" / "<page> · township-node"), different on every page
//   and following a language switch;
// - tap targets at least 44 × 44 px on phones (buttons, summaries, file inputs, links in the header,
//   the menu and forms, the export links);
// - a compact header (one row on a desktop, two on a phone), and a menu that, when it scrolls
//   sideways, shows a cue while more items follow and lets the last one be scrolled into view;
// - filter rows folded on a phone and open on a desktop;
// - required fields marked on their labels, with a legend in the form that explains the mark;
// - disabled buttons with the not-allowed cursor;
// - no script error, no CSP violation, and no axe-core violation of impact "serious" or "critical".
// Folded parts (<details>) are checked as shown and again opened.
//
// Run by tests/run.sh; E2E_NODE_BIN names the binary. E2E_UI_FROM_DISK=1 serves the UI from ui/ on
// disk instead of the copy embedded in the binary (ui-from-disk.mjs), for working on the UI without
// rebuilding. E2E_ARTIFACTS: where screenshots of failing pages go (E2E_LAYOUT_SHOTS=1: of every
// page). KEEP_E2E=1 keeps the node's data directory.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { FROM_DISK, serveUiFromDisk } from './ui-from-disk.mjs';
import { serveNode, signedIn } from './node-kit.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.E2E_NODE_BIN;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = process.env.E2E_ARTIFACTS;
// E2E_LAYOUT_SHOTS=1: a screenshot of every page (into E2E_ARTIFACTS), not only of failing ones.
const ALL_SHOTS = process.env.E2E_LAYOUT_SHOTS === '1';
const AXE = readFileSync(join(HERE, 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');

const ADMIN_PASSWORD = 'Layout-Admin-Pass-2026';
const PEOPLE_PASSWORD = 'Layout-People-Pass-2026';
const WORKER = 'grid.wang';
const HANDLER = 'water.zhao';
const WIDTHS = [
  { width: 360, height: 780, phone: true },
  { width: 390, height: 780, phone: true },
  { width: 1366, height: 768, phone: false },
];
const LANGS = ['zh-CN', 'en'];
const SUFFIX = { 'zh-CN': ' · 基层治理节点', en: ' · township-node' };
const SHELL_TITLE = '基层治理节点 · township-node';
const MIN_TAP = 44;
// A phone header of two rows of 44 px targets with a little padding; a desktop one of one row.
const MAX_HEADER = { phone: 104, desktop: 60 };

// What each page shows once it has loaded its data (beyond the heading).
const READY = {
  '/': '#work-sections[data-ready]',
  '/node': '#main .badge',
  '/incidents': '#incident-list li',
  '/tasks': '#incident-list li',
  '/outbox': '#outbox-list',
  '/indicators': '#indicators .tile, #indicators .card',
  '/sensors': '#station-list li',
  '/warnings': '#warning-lists h2',
  '/rules': '#rules-list, #rules-none',
  '/broadcasts': '#broadcasts-history-box h2',
  '/nodes': '#enroll-form',
  '/county': '#cockpit[data-ready]',
  '/users': '#users-table',
  '/audit': '#audit-table tbody tr',
  '/incidents/new': '#report-form',
  incident: '#timeline',
};

let dir;
let node;
let base;
let browser;
const seeded = {};



const startNode = (dataDir) => serveNode(BIN, ['--data-dir', dataDir],
  { PATH: process.env.PATH, RUST_LOG: 'info', TOWNSHIP_HTTP__HTTPS_LISTEN: '127.0.0.1:0' });
const apiSession = (username, password) => signedIn(base, username, password);


before(async () => {
  assert.ok(BIN, 'set E2E_NODE_BIN to the township-node binary');
  dir = mkdtempSync(join(tmpdir(), 'township-layout-'));
  const data = join(dir, 'node');
  const env = { PATH: process.env.PATH, TOWNSHIP_HTTP__HTTPS_LISTEN: '127.0.0.1:0' };
  writeFileSync(join(dir, 'admin.pw'), `${ADMIN_PASSWORD}\n`);
  writeFileSync(join(dir, 'people.pw'), `${PEOPLE_PASSWORD}\n`);
  execFileSync(BIN, ['init', '--data-dir', data, '--area', '330723001', '--name', '熟溪街道', '--role', 'township',
    '--admin-password-file', join(dir, 'admin.pw')], { env });
  for (const [username, role, area, name, dept] of [
    [WORKER, 'grid_worker', '330723001001', '王芳', null],
    [HANDLER, 'dept_handler', '330723001', '赵水利', 'water'],
  ]) {
    const args = ['user', 'add', '--data-dir', data, '--username', username, '--role', role, '--area', area,
      '--display-name', name, '--password-file', join(dir, 'people.pw')];
    if (dept) args.push('--department', dept);
    execFileSync(BIN, args, { env });
  }
  // A station inside the grid worker's village (so both roles see one), and a loudspeaker zone, so
  // the sensors list and the broadcast form have something to lay out.
  writeFileSync(join(data, 'township-node.toml'), [
    '[[devices]]',
    'id = "sim-river"',
    'name = "王宅村模拟水位站"',
    'area = "330723001001"',
    'driver = "simulator"',
    'profile = "river"',
    'interval = "5s"',
    '',
    '[[pa.outputs]]',
    'id = "amp"',
    'kind = "audio_command"',
    'command = ["true", "{file}"]',
    '',
    '[[pa.zones]]',
    'id = "wangzhai"',
    'name = "王宅村"',
    'area = "330723001001"',
    'outputs = ["amp"]',
    '',
  ].join('\n'));
  ({ child: node, base } = await startNode(data));

  // Demo data: incidents in states that show the action forms, a comment, a warning (its banner is on
  // every page), a rule.
  const admin = await apiSession('admin', ADMIN_PASSWORD);
  const worker = await apiSession(WORKER, PEOPLE_PASSWORD);
  const handler = await apiSession(HANDLER, PEOPLE_PASSWORD);
  const report = (title, category, description) => worker.call('POST', '/api/v1/incidents', {
    category, title, description, area: '330723001001', place: '王宅村东头河堤',
  });
  const step = (who, id, action, extra = {}) => who.call('POST', `/api/v1/incidents/${id}/transitions`, { action, ...extra });
  // Open, accepted: the admin may dispatch it (the dispatch form is checked).
  const open = await report('河堤护栏倒塌，夜间行人有坠河危险', '安全隐患', '王宅村东头河堤边有一段护栏倒了，夜里看不清，小孩容易掉下去。');
  await step(admin, open.id, 'accept', { note: '已受理，尽快派遣' });
  await worker.call('POST', `/api/v1/incidents/${open.id}/comments`, { text: '今天下午又有人差点摔下去。' });
  // Closed without a rating: the reporter is asked for one (the rating form is checked).
  const done = await report('村口垃圾堆放', '环境卫生', '村口垃圾三天没有清运。');
  await step(admin, done.id, 'accept');
  await step(admin, done.id, 'dispatch', { department: 'water', assist_departments: ['housing'], deadline: Date.now() + 7 * 86400e3 });
  await step(handler, done.id, 'start');
  await step(handler, done.id, 'resolve', { note: '已清运' });
  await step(worker, done.id, 'verify');
  // Just reported.
  await report('邻里噪音纠纷', '矛盾纠纷', '');
  seeded.adminIncident = open.id;
  seeded.workerIncident = done.id;
  await admin.call('POST', '/api/v1/warnings', {
    level: 'orange', event: 'rainstorm', headline: '熟溪街道暴雨橙色预警', area: '330723001',
    description: '预计未来6小时内降雨量将达50毫米以上。', instruction: '沿河低洼地带人员立即转移。',
    headline_en: 'Orange rainstorm warning for Shuxi', description_en: 'Heavy rain expected.', instruction_en: 'Leave low ground by the river.',
  });
  await admin.call('POST', '/api/v1/rules', {
    name: '王宅村水位超警', area: '330723001001', device: 'sim-river', metric: 'water_level', kind: 'threshold', op: '>=',
    levels: { yellow: 30, orange: 40, red: 50 }, event: 'flood', auto_issue: [],
  });
  seeded.tokens = { admin: admin.token, worker: worker.token };
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

// The demo data has no incident close to its deadline or past it (that takes hours); the lists and
// the admin's incident are shown as if one were, so the due badges' colours are checked too.
async function dueStates(context) {
  await context.route((url) => url.origin === base && /^\/api\/v1\/incidents(\/[0-9a-f-]{36})?$/.test(url.pathname), async (route) => {
    if (route.request().method() !== 'GET') return route.fallback();
    const response = await route.fetch();
    if (!response.ok()) return route.fulfill({ response });
    const body = await response.json();
    if (Array.isArray(body.incidents)) {
      const open = body.incidents.filter((incident) => ['reported', 'accepted'].includes(incident.state));
      open.forEach((incident, i) => { incident.due_state = i % 2 ? 'overdue' : 'near'; });
    } else if (body.id === seeded.adminIncident) {
      body.due_state = 'near';
    }
    return route.fulfill({ response, json: body });
  });
}

// Everything measured in the page at once: sideways overflow, overlapping labels, tap targets, the
// header, the menu's scroll cue, required marks, disabled buttons.
function measure({ phone, minTap, maxHeader }) {
  const problems = [];
  const vw = document.documentElement.clientWidth;
  const describe = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += `#${el.id}`;
    for (const c of el.classList) s += `.${c}`;
    if (el.getAttribute('for')) s += `[for=${el.getAttribute('for')}]`;
    if (el.getAttribute('name')) s += `[name=${el.getAttribute('name')}]`;
    const text = (el.innerText || el.value || el.getAttribute('aria-label') || '').trim().replace(/\s+/g, ' ').slice(0, 30);
    return text ? `${s} "${text}"` : s;
  };
  const visible = (el) => el.getClientRects().length > 0 && el.checkVisibility({ visibilityProperty: true, opacityProperty: false })
    && el.getBoundingClientRect().width > 0 && el.getBoundingClientRect().height > 0;
  const round = (n) => Math.round(n * 10) / 10;

  // 1. Nothing wider than the viewport.
  if (document.documentElement.scrollWidth > vw) {
    problems.push(`the page scrolls sideways: scrollWidth ${document.documentElement.scrollWidth} > ${vw}`);
  }
  // An element inside one that scrolls or clips sideways is that element's business; the scroller
  // itself must fit.
  const clippedBy = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden' || o === 'clip') return p;
    }
    return null;
  };
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (!visible(el)) continue;
    const r = el.getBoundingClientRect();
    if (r.right <= vw + 0.5 && r.left >= -0.5) continue;
    if (getComputedStyle(el).position === 'fixed') continue;
    if (clippedBy(el)) continue;
    // Report the outermost offender only.
    if (wide.some((w) => w.contains(el))) continue;
    wide.push(el);
    problems.push(`${describe(el)} reaches past the viewport: left ${round(r.left)}, right ${round(r.right)} > ${vw}`);
  }

  // 2. Labels over labels, and over controls they do not belong to; controls over controls.
  const labels = [...document.querySelectorAll('label')].filter(visible);
  const controls = [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')].filter(visible);
  const overlap = (a, b) => {
    for (const ra of a.getClientRects()) {
      for (const rb of b.getClientRects()) {
        const w = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
        const h = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
        if (w > 1 && h > 1) return true;
      }
    }
    return false;
  };
  const reported = new Set();
  const clash = (a, b) => {
    if (a === b || a.contains(b) || b.contains(a) || !overlap(a, b)) return;
    const key = [describe(a), describe(b)].sort().join(' / ');
    if (reported.has(key)) return;
    reported.add(key);
    problems.push(`${describe(a)} overlaps ${describe(b)}`);
  };
  for (const [i, label] of labels.entries()) {
    for (const other of labels.slice(i + 1)) clash(label, other);
    for (const control of controls) {
      if (label.control === control || [...(control.labels || [])].includes(label)) continue;
      clash(label, control);
    }
  }
  for (const [i, control] of controls.entries()) {
    for (const other of controls.slice(i + 1)) clash(control, other);
  }
  // Each label sits next to its own control: right above it, or beside it on the same line.
  for (const label of labels) {
    const control = label.control;
    if (!control || label.contains(control) || !visible(control)) continue;
    const l = label.getBoundingClientRect();
    const c = control.getBoundingClientRect();
    const across = Math.min(l.right, c.right) - Math.max(l.left, c.left);
    const above = l.bottom <= c.top + 2 && c.top - l.bottom <= 24 && across >= Math.min(l.width, c.width) / 2;
    const down = Math.min(l.bottom, c.bottom) - Math.max(l.top, c.top);
    const beside = down > Math.min(l.height, c.height) / 2 && (Math.abs(c.left - l.right) <= 24 || Math.abs(l.left - c.right) <= 24);
    if (!above && !beside) {
      problems.push(`${describe(label)} is not next to its control ${describe(control)} (label at ${round(l.left)},${round(l.top)}; control at ${round(c.left)},${round(c.top)})`);
    }
  }

  // 3. Tap targets: buttons anywhere, links and buttons in the header, the menu and forms, links
  // styled as buttons and summaries; inline links in running text are exempt.
  if (phone) {
    const targets = new Set([
      ...document.querySelectorAll('button, summary, a.button, input[type=file], .topbar a, #nav a, form a[href], .actions a, #incident-exports a'),
    ]);
    for (const el of targets) {
      if (!visible(el)) continue;
      const r = el.getBoundingClientRect();
      if (r.height < minTap - 0.5 || r.width < minTap - 0.5) {
        problems.push(`tap target ${describe(el)} is ${round(r.width)} × ${round(r.height)} px`);
      }
    }
  }

  // 4. A compact header.
  const header = document.querySelector('.topbar').getBoundingClientRect().height;
  if (header > maxHeader) problems.push(`the header is ${round(header)} px high (at most ${maxHeader})`);

  // 5. A menu that scrolls sideways says so: a cue at the end while there is more to the right.
  const nav = document.getElementById('nav');
  if (nav.scrollWidth > nav.clientWidth + 1) {
    const style = getComputedStyle(nav);
    if (!['auto', 'scroll'].includes(style.overflowX)) problems.push('the menu is wider than the screen but does not scroll');
    const more = nav.scrollLeft + nav.clientWidth < nav.scrollWidth - 1;
    const cue = getComputedStyle(nav, '::after');
    if (more && (cue.content === 'none' || cue.display === 'none' || cue.visibility === 'hidden')) {
      problems.push('the menu scrolls sideways with no cue that more items follow');
    }
  }

  // 6. Required fields are marked, and the form says what the mark means.
  for (const form of document.querySelectorAll('main form')) {
    if (!visible(form)) continue;
    const required = [...form.querySelectorAll('[required], [aria-required="true"]')]
      .filter((c) => visible(c) && !['checkbox', 'radio'].includes(c.type));
    if (!required.length) continue;
    if (!form.querySelector('.required-note')) problems.push(`${describe(form)} has required fields but no legend for the mark`);
    for (const c of required) {
      const marked = [...(c.labels || [])].some((l) => l.querySelector('.required-mark'));
      if (!marked) problems.push(`required ${describe(c)} has no visible required mark on its label`);
    }
  }

  // 7. Disabled buttons look it.
  for (const b of document.querySelectorAll('button:disabled')) {
    if (!visible(b)) continue;
    if (getComputedStyle(b).cursor !== 'not-allowed') problems.push(`disabled ${describe(b)} does not show the not-allowed cursor`);
  }
  return problems;
}

// The menu, scrolled to its end: the last item fits on screen, and the cue has gone.
function navEnd() {
  const nav = document.getElementById('nav');
  if (nav.scrollWidth <= nav.clientWidth + 1) return [];
  const problems = [];
  nav.scrollLeft = nav.scrollWidth;
  const links = [...nav.querySelectorAll('a')].filter((a) => !a.hidden);
  const last = links[links.length - 1].getBoundingClientRect();
  if (last.right > document.documentElement.clientWidth + 0.5) problems.push(`the last menu item cannot be scrolled into view (right ${last.right})`);
  return problems;
}

async function runAxe(page) {
  // Evaluated over DevTools, which the page's CSP (scripts from 'self' only) does not govern; a
  // <script> tag with axe's source would be refused, and bypassCSP would hide the UI's own CSP
  // violations from this test.
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.evaluate(AXE);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.map((n) => `${n.target.join(' ')}${n.any[0]?.message ? ` (${n.any[0].message})` : ''}`),
    }));
  });
  return violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `axe ${v.impact} ${v.id}: ${v.help}: ${v.nodes.slice(0, 5).join('; ')}${v.nodes.length > 5 ? ` (+${v.nodes.length - 5} more)` : ''}`);
}

async function visit(page, path, readyKey) {
  const problems = [];
  await page.goto(base + path);
  try {
    await page.locator('#user-name').waitFor({ timeout: 10000 });
    await page.locator('#main h1').first().waitFor({ timeout: 10000 });
    await page.locator(READY[readyKey]).first().waitFor({ state: 'attached', timeout: 10000 });
    await page.waitForFunction(() => !document.querySelector('#main .loading'), null, { timeout: 10000 });
  } catch (e) {
    problems.push(`did not finish loading: ${e.message.split('\n')[0]}`);
  }
  try {
    await page.waitForFunction((shell) => document.title && document.title !== shell, SHELL_TITLE, { timeout: 3000 });
  } catch (_) { /* reported below */ }
  // Late layout: images, the catalog filling a select.
  await page.waitForTimeout(150);
  return problems;
}

const slug = (s) => s.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '') || 'overview';

for (const role of ['admin', 'worker']) {
  for (const lang of LANGS) {
    for (const size of WIDTHS) {
      test(`${role}, ${lang}, ${size.width} px: every page fits, labels apart, titled, large targets, no serious axe violations`, async () => {
        const context = await browser.newContext({
          viewport: { width: size.width, height: size.height },
          isMobile: size.phone,
          hasTouch: size.phone,
          deviceScaleFactor: 1,
          locale: lang,
          serviceWorkers: 'block',
        });
        if (FROM_DISK) await serveUiFromDisk(context, base);
        await dueStates(context);
        await context.addCookies([{ name: 'tn_session', value: seeded.tokens[role], url: base, httpOnly: true, sameSite: 'Strict' }]);
        if (lang === 'en') await context.addInitScript(() => localStorage.setItem('township.lang', 'en'));
        const page = await context.newPage();
        const scriptErrors = [];
        page.on('pageerror', (e) => scriptErrors.push(e.message));
        page.on('console', (m) => { if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) scriptErrors.push(m.text()); });

        // The pages this role's menu offers, the report form and one incident.
        await page.goto(base + '/');
        await page.locator('#user-name').waitFor();
        await page.waitForFunction(() => document.querySelectorAll('#nav a:not([hidden])').length > 1);
        const menu = await page.evaluate(() => [...document.querySelectorAll('#nav a:not([hidden])')].map((a) => new URL(a.href).pathname));
        const incident = role === 'admin' ? seeded.adminIncident : seeded.workerIncident;
        const pages = [...menu.map((p) => ({ path: p, ready: p })), { path: '/incidents/new', ready: '/incidents/new' },
          { path: `/incidents/${incident}`, ready: 'incident' }];

        const failures = [];
        const titles = new Map();
        const where = `${role} ${lang} ${size.width}px`;
        for (const { path, ready } of pages) {
          const problems = [...await visit(page, path, ready)];
          if (ready === 'incident') {
            // The action form with most fields: dispatch for the admin.
            const dispatch = page.locator('#actions button[data-action="dispatch"]');
            if (await dispatch.count()) {
              await dispatch.click();
              await page.locator('form[data-action="dispatch"]').waitFor();
            }
          }
          if (ARTIFACTS && ALL_SHOTS) {
            mkdirSync(ARTIFACTS, { recursive: true });
            await page.screenshot({ path: join(ARTIFACTS, `layout-${role}-${lang}-${size.width}-${slug(path)}-first.png`) });
          }
          const title = await page.title();
          const name = title.endsWith(SUFFIX[lang]) ? title.slice(0, -SUFFIX[lang].length).trim() : '';
          if (title === SHELL_TITLE || !name) {
            problems.push(`window title "${title}" is not "<page>${SUFFIX[lang]}"`);
          } else if (titles.has(title)) {
            problems.push(`window title "${title}" is the same as on ${titles.get(title)}`);
          } else {
            titles.set(title, path);
          }
          // Filter rows are folded on a phone and open on a desktop.
          const folds = await page.evaluate(() => [...document.querySelectorAll('main form.filters')]
            .filter((f) => f.querySelectorAll('.field').length > 1 && !f.closest('[hidden]'))
            .map((f) => ({ id: f.id, state: f.closest('details') ? (f.closest('details').open ? 'open' : 'folded') : 'not foldable' })));
          for (const { id, state } of folds) {
            if (state !== (size.phone ? 'folded' : 'open')) problems.push(`the filters #${id} are ${state} (expected ${size.phone ? 'folded' : 'open'})`);
          }
          const args = { phone: size.phone, minTap: MIN_TAP, maxHeader: size.phone ? MAX_HEADER.phone : MAX_HEADER.desktop };
          problems.push(...await page.evaluate(measure, args));
          if (size.phone) problems.push(...await page.evaluate(navEnd));
          // Filters and other folded parts, opened.
          const folded = await page.evaluate(() => {
            const closed = [...document.querySelectorAll('main details:not([open])')];
            for (const d of closed) d.open = true;
            return closed.length;
          });
          if (folded) {
            await page.waitForTimeout(50);
            problems.push(...(await page.evaluate(measure, args)).map((p) => `(opened) ${p}`));
          }
          problems.push(...await runAxe(page));
          problems.push(...scriptErrors.splice(0));
          if (problems.length) failures.push(`${where} ${path}:\n    ${[...new Set(problems)].join('\n    ')}`);
          if (ARTIFACTS && (problems.length || ALL_SHOTS)) {
            mkdirSync(ARTIFACTS, { recursive: true });
            const shot = join(ARTIFACTS, `layout-${role}-${lang}-${size.width}-${slug(path)}.png`);
            await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
          }
        }
        // The title follows a language switch.
        const other = lang === 'en' ? 'zh-CN' : 'en';
        await page.locator('#lang-toggle').click();
        try {
          await page.waitForFunction((suffix) => document.title.endsWith(suffix), SUFFIX[other], { timeout: 5000 });
        } catch (_) {
          failures.push(`${where}: after switching to ${other} the window title is still "${await page.title()}"`);
        }
        await context.close();
        assert.equal(failures.length, 0, `${failures.length} of ${pages.length} pages failed:\n  ${failures.join('\n  ')}`);
      });
    }
  }
}
