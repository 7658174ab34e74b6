// The landing page's and the new-work notice's browser-free rules (ui/js/work-logic.js): which
// sections each role gets and in which order, how late is said, which rows come first, and which
// notice a change of the work summary gives (only when the total went up). Run with
// `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');

// Loaded from their text, as i18n.test.mjs does: ui/ has no package.json saying .js is ESM.
const load = (path) => import(`data:text/javascript;base64,${Buffer.from(readFileSync(join(UI, 'js', path), 'utf8')).toString('base64')}`);
const logic = await load('work-logic.js');
const texts = { 'zh-CN': (await load('i18n/work-zh-CN.js')).default, en: (await load('i18n/work-en.js')).default };

// The notice as a person reads it, in the way work.js puts it together.
function notice(lang, parts) {
  const dict = texts[lang];
  return parts.map((p) => dict[logic.newWorkKey(p)].replace('{n}', String(p.n))).join(dict['work.toast_sep']);
}

const worker = { username: 'wang.fang', role: 'grid_worker', area: '330723001001' };
const staff = { username: 'li.ming', role: 'township_staff', area: '330723001' };
const admin = { username: 'admin', role: 'admin', area: '330723001' };
const handler = { username: 'zhao.shui', role: 'dept_handler', area: '330723001', department: 'water' };
const countyIt = { username: 'it.chen', role: 'county_it', area: '330723' };

const summary = (items, total = items.reduce((n, i) => n + i.count, 0)) => ({ items, total, latest_ms: 1 });

test('each role gets its sections in its order', () => {
  const ids = (user, options) => logic.sectionsFor(user, null, options).map((s) => s.id);
  assert.deepEqual(ids(worker), ['verify', 'mine']);
  assert.deepEqual(ids(staff), ['new', 'overdue', 'escalated', 'warnings']);
  assert.deepEqual(ids(admin), ['new', 'overdue', 'escalated', 'warnings']);
  assert.deepEqual(ids(handler), ['queue']);
  assert.deepEqual(ids(countyIt, { canNodes: true }), ['nodes', 'escalated']);
  assert.deepEqual(ids(countyIt, { canNodes: false }), ['escalated'], 'no nodes section without the right to read them');
  assert.deepEqual(ids({ username: 'x', role: 'unknown' }), []);
  assert.deepEqual(logic.sectionsFor(null, null), []);
});

test("a grid worker's checks come first and stand out; her other reports are her open ones", () => {
  const [verify, mine] = logic.sectionsFor(worker, null);
  assert.equal(verify.highlight, true);
  assert.equal(mine.highlight, false);
  assert.equal(verify.filter, 'state=resolved&reporter=wang.fang');
  assert.equal(mine.filter, 'reporter=wang.fang&state=reported,accepted,escalated,dispatched,in_progress');
  assert.equal(mine.href, '/incidents?reporter=wang.fang&state=reported,accepted,escalated,dispatched,in_progress');
});

test("sections take the node's filter and count from the summary, and stand without one", () => {
  const s = summary([
    { kind: 'new', count: 2, filter: 'state=reported' },
    { kind: 'overdue', count: 1, filter: 'overdue=true&x=1' },
    { kind: 'escalated', count: 0, filter: 'state=escalated' },
  ]);
  const [fresh, overdue, escalated, warnings] = logic.sectionsFor(staff, s);
  assert.equal(fresh.count, 2);
  assert.equal(overdue.filter, 'overdue=true&x=1');
  assert.equal(overdue.href, '/incidents?overdue=true&x=1');
  assert.equal(overdue.lateness, true);
  assert.equal(escalated.count, 0);
  assert.equal(warnings.source, 'warnings');
  assert.equal(warnings.count, null, 'warnings are counted from their list');
  // Offline: the same lists by the node's own queries, counted from the lists.
  const [queue] = logic.sectionsFor(handler, null);
  assert.equal(queue.filter, 'state=dispatched,in_progress&department=water');
  assert.equal(queue.count, null);
  assert.equal(queue.overdueFirst, true);
  assert.equal(logic.sectionsFor(countyIt, null, { canNodes: true })[1].titleKey, 'work.section_from_townships');
});

test('lateness is whole minutes, hours or days, rounded down, and nothing before the deadline', () => {
  const due = 1_000_000_000;
  const min = 60_000;
  assert.equal(logic.lateness(due, due - 1), null);
  assert.equal(logic.lateness(due, due), null);
  assert.equal(logic.lateness(null, due), null);
  assert.deepEqual(logic.lateness(due, due + 30_000), { key: 'work.late_just', n: 0 });
  assert.deepEqual(logic.lateness(due, due + 5 * min), { key: 'work.late_minutes', n: 5 });
  assert.deepEqual(logic.lateness(due, due + 59 * min), { key: 'work.late_minutes', n: 59 });
  assert.deepEqual(logic.lateness(due, due + 60 * min), { key: 'work.late_hours', n: 1 });
  assert.deepEqual(logic.lateness(due, due + 3 * 60 * min + 59 * min), { key: 'work.late_hours', n: 3 });
  assert.deepEqual(logic.lateness(due, due + 2 * 1440 * min + 5), { key: 'work.late_days', n: 2 });
  const said = (lang, late) => texts[lang][late.key].replace('{n}', String(late.n));
  assert.equal(said('zh-CN', logic.lateness(due, due + 3 * 60 * min)), '超期 3 小时');
  assert.equal(said('en', logic.lateness(due, due + 3 * 60 * min)), '3 h overdue');
});

test('a queue is worked overdue first, then near, then the rest, earliest deadline first', () => {
  const rows = [
    { id: 'a', due_state: 'ok', due_ms: 10 },
    { id: 'b', due_state: 'overdue', due_ms: 50 },
    { id: 'c', due_state: 'near', due_ms: 30 },
    { id: 'd', due_state: 'overdue', due_ms: 20 },
    { id: 'e', due_state: 'ok', due_ms: null },
  ];
  assert.deepEqual(logic.overdueFirst(rows).map((r) => r.id), ['d', 'b', 'c', 'a', 'e']);
  assert.deepEqual(logic.mostLateFirst(rows).map((r) => r.id), ['a', 'd', 'c', 'b', 'e']);
  assert.deepEqual(logic.mergeRows([[rows[1], rows[3]], rows], 4).map((r) => r.id), ['b', 'd', 'a', 'c']);
});

test('who holds an overdue incident', () => {
  assert.deepEqual(logic.holder({ state: 'dispatched', lead_department: 'water', lead_department_name: '水利' }), { key: 'work.held_by', name: '水利' });
  assert.deepEqual(logic.holder({ state: 'reported' }), { key: 'work.held_by_township' });
  assert.deepEqual(logic.holder({ state: 'escalated' }), { key: 'work.held_by_county' });
});

test('nodes: the unhealthy first, the one silent longest at the top, revoked last', () => {
  const nodes = [
    { node_id: '1', name: '乙', connected: true, last_seen_ms: 100, last_error: null, revoked: false },
    { node_id: '2', name: '甲', connected: false, last_seen_ms: 50, last_error: null, revoked: false },
    { node_id: '3', name: '丙', connected: true, last_seen_ms: 90, last_error: 'handshake refused', revoked: false },
    { node_id: '4', name: '丁', connected: false, last_seen_ms: 10, last_error: null, revoked: true },
    { node_id: '5', name: '戊', connected: false, last_seen_ms: null, last_error: null, revoked: false },
  ];
  assert.deepEqual(logic.nodesByHealth(nodes).map((n) => n.node_id), ['5', '2', '3', '1', '4']);
  assert.deepEqual(nodes.filter(logic.nodeUnhealthy).map((n) => n.node_id), ['2', '3', '5']);
});

test('the badge shows the total, and nothing at zero or without a summary', () => {
  assert.equal(logic.badgeCount(null), 0);
  assert.equal(logic.badgeCount({ items: [], total: 0 }), 0);
  assert.equal(logic.badgeCount({ items: [], total: 3 }), 3);
});

test('a notice only when the total went up, naming what came in', () => {
  const before = summary([{ kind: 'new', count: 0, filter: '' }, { kind: 'overdue', count: 1, filter: '' }, { kind: 'escalated', count: 0, filter: '' }]);
  const oneNew = summary([{ kind: 'new', count: 1, filter: '' }, { kind: 'overdue', count: 1, filter: '' }, { kind: 'escalated', count: 0, filter: '' }]);
  // The first summary after sign-in is what the page shows, not news.
  assert.deepEqual(logic.newWork(null, oneNew), []);
  assert.deepEqual(logic.newWork(before, oneNew), [{ kind: 'new', n: 1 }]);
  assert.equal(notice('zh-CN', logic.newWork(before, oneNew)), '新上报 1 件');
  assert.equal(notice('en', logic.newWork(before, oneNew)), '1 new report');
  // Less, or the same: nothing to tell.
  assert.deepEqual(logic.newWork(oneNew, before), []);
  assert.deepEqual(logic.newWork(oneNew, oneNew), []);
  // An accepted report leaves "new" while another comes in: the total is the same, so no notice.
  const swapped = summary([{ kind: 'new', count: 1, filter: '' }, { kind: 'overdue', count: 1, filter: '' }, { kind: 'escalated', count: 0, filter: '' }], 2);
  assert.deepEqual(logic.newWork(summary(swapped.items, 2), swapped), []);
  // Several kinds grew.
  const more = summary([{ kind: 'new', count: 3, filter: '' }, { kind: 'overdue', count: 2, filter: '' }, { kind: 'escalated', count: 0, filter: '' }]);
  assert.deepEqual(logic.newWork(before, more), [{ kind: 'new', n: 3 }, { kind: 'overdue', n: 1 }]);
  assert.equal(notice('zh-CN', logic.newWork(before, more)), '新上报 3 件，新超期 1 件');
  assert.equal(notice('en', logic.newWork(before, more)), '3 new reports, 1 more overdue');
  // Her check.
  const check0 = summary([{ kind: 'verify', count: 0, filter: '' }]);
  const check1 = summary([{ kind: 'verify', count: 1, filter: '' }]);
  assert.equal(notice('zh-CN', logic.newWork(check0, check1)), '待核查 1 件');
  assert.equal(notice('en', logic.newWork(check0, check1)), '1 report to check');
  // The total went up with no kind growing (an incident counted in a second list): told in general.
  const t1 = summary([{ kind: 'new', count: 1, filter: '' }], 1);
  const t2 = summary([{ kind: 'new', count: 1, filter: '' }], 2);
  assert.deepEqual(logic.newWork(t1, t2), [{ kind: 'any', n: 1 }]);
  assert.equal(notice('zh-CN', logic.newWork(t1, t2)), '新的待办 1 件');
});

test('every section and notice has its texts in both languages', () => {
  const keys = new Set();
  for (const user of [worker, staff, handler, countyIt]) {
    for (const s of logic.sectionsFor(user, null, { canNodes: true })) {
      keys.add(s.titleKey);
      keys.add(`work.empty_${s.id}`);
    }
  }
  for (const kind of ['verify', 'new', 'overdue', 'escalated', 'queue', 'any', 'something-else']) {
    for (const n of [1, 2]) keys.add(logic.newWorkKey({ kind, n }));
  }
  for (const key of ['work.late_just', 'work.late_minutes', 'work.late_hours', 'work.late_days', 'work.held_by', 'work.held_by_township', 'work.held_by_county']) keys.add(key);
  const missing = [...keys].flatMap((key) => Object.keys(texts).filter((lang) => !Object.hasOwn(texts[lang], key)).map((lang) => `${lang}: ${key}`));
  assert.deepEqual(missing, []);
});
