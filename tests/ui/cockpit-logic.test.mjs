// The county overview's rules (ui/js/cockpit-logic.js), shared with the nodes page for the nodes further
// down: every node of the tree once with its link state (as the node states it, or guessed for an
// older one), worst first, the counts at the head of the section, the groups by the child a node came
// through, and when a report from below is too old to be current; incidents per township; stations in
// trouble; standing warnings; and what a failed section says. Run with `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');

// Loaded from their text, as i18n.test.mjs does: ui/ has no package.json saying .js is ESM.
const load = (path) => import(`data:text/javascript;base64,${Buffer.from(readFileSync(join(UI, 'js', path), 'utf8')).toString('base64')}`);
const logic = await load('cockpit-logic.js');
const texts = { 'zh-CN': (await load('i18n/zh-CN.js')).default, en: (await load('i18n/en.js')).default };
const say = (lang, key, params = {}) => texts[lang][key].replace(/\{([a-z_]+)\}/g, (whole, name) => String(params[name] ?? whole));

const intact = { intact: true, broken_seq: null, problem: null, entries: 10, signed_seq: 9 };
const broken = { intact: false, broken_seq: 4, problem: 'entry 4 does not hash', entries: 3, signed_seq: 3 };

// A county with two townships: 城关镇 connected, 白洋街道 down. 城关镇 reports two villages, 白洋街道 one
// (whose report is therefore as of when 白洋街道 was last here).
const nodesAnswer = {
  nodes: [
    { node_id: 'T1', name: '城关镇', area: '330723001', connected: true, revoked: false, last_seen_ms: 9_000, last_error: null, pending_in: 0, pending_out: 2, version: '0.4.0', chain: intact },
    { node_id: 'T2', name: '白洋街道', area: '330723002', connected: false, revoked: false, last_seen_ms: 5_000, last_error: null, pending_in: 0, pending_out: 40, version: '0.4.0', chain: intact },
    { node_id: 'T3', name: '旧节点', area: '330723003', connected: false, revoked: true, last_seen_ms: 1_000, last_error: null, pending_in: 0, pending_out: 0, version: '0.3.0', chain: null },
  ],
  below: [
    { node_id: 'V1', name: '王宅村', area: '330723001001', via: 'T1', reported_by: 'T1', reported_ms: 8_000, connected: true, revoked: false, last_seen_ms: 8_000, last_error: null, pending_in: 0, pending_out: 0, version: '0.4.0', chain: intact },
    { node_id: 'V2', name: '桐琴村', area: '330723001002', via: 'T1', reported_by: 'T1', reported_ms: 8_000, connected: false, revoked: false, last_seen_ms: 2_000, last_error: 'refused: version 0.2 is too old', pending_in: 0, pending_out: 7, version: '0.2.0', chain: null },
    { node_id: 'V3', name: '白洋村', area: '330723002001', via: 'T2', reported_by: 'T2', reported_ms: 4_000, connected: true, revoked: false, last_seen_ms: 4_000, last_error: null, pending_in: 1, pending_out: 0, version: '0.4.0', chain: broken },
  ],
};

test('a node is connected, failing (with a reason), offline or revoked', () => {
  assert.equal(logic.linkState({ connected: true, last_error: 'old' }), 'connected');
  assert.equal(logic.linkState({ connected: false, last_error: 'refused: not enrolled' }), 'error');
  assert.equal(logic.linkState({ connected: false, last_error: '  ' }), 'offline');
  assert.equal(logic.linkState({ connected: false, last_error: null }), 'offline');
  assert.equal(logic.linkState({ connected: true, revoked: true }), 'revoked');
  assert.equal(logic.linkState(null), 'offline');
});

test('the tree holds every node once, the ones below marked stale when their child is down', () => {
  const all = logic.treeNodes(nodesAnswer);
  assert.deepEqual(all.map((n) => n.node_id), ['T1', 'T2', 'T3', 'V1', 'V2', 'V3']);
  assert.deepEqual(all.filter((n) => n.level === 'below').map((n) => [n.node_id, n.stale]), [['V1', false], ['V2', false], ['V3', true]]);
  // A village moved from one township to another is reported by both for a while: the newest wins.
  const moved = { ...nodesAnswer, below: [...nodesAnswer.below, { ...nodesAnswer.below[0], via: 'T2', reported_by: 'T2', reported_ms: 1_000 }] };
  assert.equal(logic.treeNodes(moved).filter((n) => n.node_id === 'V1').length, 1);
  assert.equal(logic.treeNodes(moved).find((n) => n.node_id === 'V1').via, 'T1');
  // A node enrolled here is known first-hand; what a child says of it does not count.
  const enrolled = { nodes: nodesAnswer.nodes, below: [{ ...nodesAnswer.below[0], node_id: 'T1' }] };
  assert.equal(logic.treeNodes(enrolled).length, 3);
  assert.deepEqual(logic.treeNodes({ nodes: [] }), []);
  assert.deepEqual(logic.treeNodes(undefined), []);
});

test('worst first: tampered, failing, offline (silent longest first), connected, revoked', () => {
  const order = logic.worstFirst(logic.treeNodes(nodesAnswer)).map((n) => n.node_id);
  assert.deepEqual(order, ['V3', 'V2', 'T2', 'T1', 'V1', 'T3']);
  const never = { node_id: 'N', name: '新村', connected: false, last_seen_ms: null };
  const old = { node_id: 'O', name: '老村', connected: false, last_seen_ms: 100 };
  assert.deepEqual(logic.worstFirst([old, never]).map((n) => n.node_id), ['N', 'O'], 'never seen is the longest silence');
});

test('the counts: connected, disconnected, refused or failing, chain broken, revoked apart', () => {
  const c = logic.linkCounts(logic.treeNodes(nodesAnswer));
  assert.deepEqual(c, { total: 6, connected: 3, offline: 1, refused: 0, error: 1, revoked: 1, chain_broken: 1, stale: 1, outdated: 0 });
  assert.equal(say('zh-CN', 'cockpit.stale_note', { n: c.stale }), '有 1 个节点经由的下级节点当前未连接，显示的是最后一次报告的情况。');
  assert.equal(logic.linkCounts(null).total, 0);
});

test('the nodes page groups the nodes further down by the child they came through, worst first', () => {
  const groups = logic.belowGroups(nodesAnswer);
  assert.deepEqual(groups.map((g) => [g.via, g.child && g.child.name, g.name, g.stale, g.outdated]),
    [['T1', '城关镇', '城关镇', false, 0], ['T2', '白洋街道', '白洋街道', true, 0]]);
  assert.deepEqual(groups[0].rows.map((n) => n.node_id), ['V2', 'V1'], 'the failing village before the connected one');
  // A child no longer listed (revoked and dropped) still shows what it reported, after the others.
  const orphan = { nodes: nodesAnswer.nodes, below: [...nodesAnswer.below, { ...nodesAnswer.below[0], node_id: 'V9', via: 'GONE' }] };
  const last = logic.belowGroups(orphan).at(-1);
  assert.equal(last.via, 'GONE');
  assert.equal(last.child, null);
  assert.equal(last.name, null, 'an older answer names no child it does not list');
  assert.equal(last.stale, true);
  assert.equal(say('zh-CN', 'nodes.below_via', { name: '城关镇' }), '经 城关镇');
});

// The same county as a node that says each link's state and when each report was made: 城关镇
// refused by the county (a key mismatch after a reinstall: its villages' reports are still the last it
// sent), 白洋街道 connected. 城关镇's report of 王宅村 is 40 minutes old, 白洋街道's of 白洋村 current.
// 桐琴村, relayed by 城关镇, was reported by 王宅村 (a village with a node under it).
const MIN = 60e3;
const NOW = Date.UTC(2026, 5, 30, 4, 0, 0);
const statedAnswer = {
  nodes: [
    { ...nodesAnswer.nodes[0], connected: false, state: 'refused', last_error: 'refused: key does not match the enrolled one' },
    { ...nodesAnswer.nodes[1], connected: true, state: 'connected', last_error: 'timed out' },
    { ...nodesAnswer.nodes[2], state: 'offline' },
  ],
  below: [
    { ...nodesAnswer.below[0], state: 'connected', as_of_ms: NOW - 40 * MIN, via_name: '城关镇', reported_by_name: '城关镇' },
    { ...nodesAnswer.below[1], reported_by: 'V1', state: 'refused', as_of_ms: NOW - 40 * MIN, via_name: '城关镇', reported_by_name: null },
    { ...nodesAnswer.below[2], state: 'offline', connected: true, as_of_ms: NOW - 10 * MIN, via_name: '白洋街道', reported_by_name: '白洋街道' },
  ],
};

test('a node that states its link is taken at its word; one that does not is guessed as before', () => {
  assert.equal(logic.linkState({ state: 'refused', connected: false, last_error: 'refused: version 0.2 is too old' }), 'refused');
  assert.equal(logic.linkState({ state: 'refused', connected: false, last_error: null }), 'refused', 'a refusal whatever the reason says');
  assert.equal(logic.linkState({ state: 'offline', connected: false, last_error: 'connection reset' }), 'offline', 'a past error is not a refusal');
  assert.equal(logic.linkState({ state: 'connected', connected: false }), 'connected');
  assert.equal(logic.linkState({ state: 'offline', connected: true }), 'offline', 'the stated state wins over the flag');
  assert.equal(logic.linkState({ state: 'refused', revoked: true }), 'revoked', 'revoked is a decision taken here, above any link');
  assert.equal(logic.linkState({ state: 'something new', connected: true }), 'connected', 'a state this page does not know: as before');
  assert.equal(logic.linkState({ state: 'something new', connected: false, last_error: 'x' }), 'error');
  assert.deepEqual(logic.LINK_STATES, ['connected', 'offline', 'refused']);
});

test('the badge says a refusal in words, with its reason at hand', () => {
  const refused = logic.linkBadgeSpec(statedAnswer.nodes[0]);
  assert.deepEqual(refused, { state: 'refused', key: 'nodes.refused', tone: 'bad', reason: 'refused: key does not match the enrolled one' });
  assert.deepEqual(logic.linkBadgeSpec(statedAnswer.nodes[1]), { state: 'connected', key: 'nodes.connected', tone: 'ok', reason: null },
    'an old error on a connected link is not its reason');
  assert.equal(logic.linkBadgeSpec({ connected: false, last_error: 'refused: not enrolled' }).key, 'nodes.link_error');
  assert.equal(logic.linkBadgeSpec({ state: 'offline' }).tone, '');
  assert.equal(logic.linkBadgeSpec({ revoked: true }).key, 'nodes.revoked');
  for (const lang of ['zh-CN', 'en']) {
    for (const key of ['nodes.refused', 'nodes.connected', 'nodes.offline', 'nodes.revoked', 'nodes.link_error', 'cockpit.refused']) {
      assert.ok(texts[lang][key], `${lang} ${key}`);
    }
  }
  assert.equal(say('zh-CN', 'nodes.refused'), '被拒绝');
});

test('a report from below is out of date once it is over 25 minutes old by when it was made', () => {
  assert.equal(logic.REPORT_OUTDATED_MS, 25 * MIN);
  assert.deepEqual(logic.reportAge({ as_of_ms: NOW - 20 * MIN }, NOW), { at: NOW - 20 * MIN, age_ms: 20 * MIN, outdated: false });
  assert.equal(logic.reportAge({ as_of_ms: NOW - 25 * MIN }, NOW).outdated, false, 'at 25 minutes still current');
  assert.equal(logic.reportAge({ as_of_ms: NOW - 25 * MIN - 1 }, NOW).outdated, true);
  assert.equal(logic.reportAge({ as_of_ms: NOW + 5 * MIN }, NOW).age_ms, 0, 'a reporter whose clock is ahead is not younger than now');
  assert.equal(logic.reportAge({ reported_ms: NOW - 90 * MIN }, NOW), null, 'an older parent does not say when it made the report');
  assert.equal(logic.reportAge({ as_of_ms: null }, NOW), null);
  assert.equal(logic.reportAge(null, NOW), null);
});

test('the tree marks reports out of date by the clock it is given, besides a child that is down', () => {
  const all = logic.treeNodes(statedAnswer, NOW);
  const below = (id) => all.find((n) => n.node_id === id);
  assert.deepEqual(['V1', 'V2', 'V3'].map((id) => [id, below(id).stale, below(id).outdated]),
    [['V1', true, true], ['V2', true, true], ['V3', false, false]], '城关镇 is refused, so not connected: its reports are stale too');
  assert.equal(below('V3').report.age_ms, 10 * MIN);
  assert.equal(all.find((n) => n.node_id === 'T1').outdated, false, 'a direct child is known first-hand');
  // Twenty minutes earlier every report was current.
  assert.deepEqual(logic.treeNodes(statedAnswer, NOW - 20 * MIN).filter((n) => n.outdated), []);
  // Without as_of_ms (an older parent) nothing is out of date; only the child's link says anything.
  assert.deepEqual(logic.treeNodes(nodesAnswer, NOW).filter((n) => n.outdated || n.report), []);
  // The stated state of each node below counts, not its flag.
  assert.equal(logic.linkState(below('V2')), 'refused');
  assert.equal(logic.linkState(below('V3')), 'offline');
  const c = logic.linkCounts(all);
  assert.deepEqual(c, { total: 6, connected: 2, offline: 1, refused: 2, error: 0, revoked: 1, chain_broken: 1, stale: 2, outdated: 2 });
  assert.equal(say('zh-CN', 'cockpit.outdated_note', { n: c.outdated, minutes: 25 }), '有 2 个节点的报告超过 25 分钟没有更新，可能已经过时。');
  assert.match(say('en', 'cockpit.outdated_note', { n: c.outdated, minutes: 25 }), /over 25 minutes: 2\./);
  assert.deepEqual(logic.worstFirst(all).map((n) => n.node_id).slice(0, 3), ['V3', 'V2', 'T1'], 'tampered, then the refused, silent longest first');
});

test('the newest report of a node wins by when it was made, else by when it arrived', () => {
  const older = { ...statedAnswer.below[0], via: 'T2', as_of_ms: NOW - 60 * MIN, reported_ms: NOW };
  const moved = { ...statedAnswer, below: [...statedAnswer.below, older] };
  assert.equal(logic.treeNodes(moved, NOW).find((n) => n.node_id === 'V1').via, 'T1', 'made later, though it arrived earlier');
  const same = { ...statedAnswer, below: [...statedAnswer.below, { ...older, as_of_ms: NOW - 40 * MIN, reported_ms: 9e15 }] };
  assert.equal(logic.treeNodes(same, NOW).find((n) => n.node_id === 'V1').via, 'T2');
});

test('the groups name their child from the reports when it is not listed, and count reports out of date', () => {
  const groups = logic.belowGroups(statedAnswer, NOW);
  assert.deepEqual(groups.map((g) => [g.via, g.name, g.stale, g.outdated]), [['T1', '城关镇', true, 2], ['T2', '白洋街道', false, 0]]);
  const gone = { nodes: statedAnswer.nodes, below: [{ ...statedAnswer.below[0], node_id: 'V9', via: 'GONE', via_name: '旧乡镇' }] };
  assert.equal(logic.belowGroups(gone, NOW).at(-1).name, '旧乡镇');
  const children = new Map(statedAnswer.nodes.map((n) => [n.node_id, n]));
  assert.equal(logic.viaName({ via: 'T1', via_name: '改名前' }, children), '城关镇', 'the list here is the newest word');
  assert.equal(logic.viaName({ via: 'X', via_name: '  ' }, children), null);
  assert.equal(logic.viaName({ via: 'X' }, children), null);
  assert.equal(say('zh-CN', 'nodes.below_outdated', { n: 2, minutes: 25 }),
    '其中 2 个节点的报告超过 25 分钟没有更新，可能已经过时（例如报告它们的节点与本节点之间的链路已中断）。');
});

test('a report made by a node below the child says who made it', () => {
  const tree = logic.treeNodes(statedAnswer, NOW);
  const v2 = tree.find((n) => n.node_id === 'V2');
  assert.deepEqual(logic.reporter(v2, tree), { id: 'V1', name: '王宅村' }, 'named as the tree knows it');
  assert.equal(logic.reporter(tree.find((n) => n.node_id === 'V1'), tree), null, 'the child itself: its group says so');
  assert.deepEqual(logic.reporter({ via: 'T1', reported_by: 'V7' }, tree), { id: 'V7', name: null });
  assert.deepEqual(logic.reporter({ via: 'T1', reported_by: 'V7', reported_by_name: '某村' }, []), { id: 'V7', name: '某村' });
  assert.equal(logic.reporter({ via: 'T1' }, tree), null);
  assert.equal(say('zh-CN', 'nodes.reported_by', { name: '王宅村' }), '由 王宅村 报告');
  assert.equal(say('zh-CN', 'nodes.report_age', { age: '12 分钟前' }), '报告于 12 分钟前');
  assert.equal(say('en', 'nodes.report_age', { age: '12 min ago' }), 'reported 12 min ago');
  assert.match(say('en', 'nodes.report_outdated_help', { minutes: 25 }), /over 25 minutes/);
});

test('incidents: one row per township, most overdue first, the county\'s own marked', () => {
  const answer = {
    area: '330723', from_ms: 0, to_ms: 1,
    total: { reported: 30, closed: 20, overdue_open: 4, on_time_rate: 0.8 },
    per_area: {
      330723001: { reported: 10, closed: 9, overdue_open: 0, on_time_rate: 1 },
      330723002: { reported: 5, closed: 1, overdue_open: 3, on_time_rate: 0.25 },
      330723003: { reported: 12, closed: 10, overdue_open: 1, on_time_rate: null },
      330723: { reported: 3, closed: 0, overdue_open: 0, on_time_rate: null },
    },
  };
  const rows = logic.incidentRows(answer);
  assert.deepEqual(rows.map((r) => r.area), ['330723002', '330723003', '330723001', '330723']);
  assert.deepEqual(rows[0], { area: '330723002', own: false, reported: 5, closed: 1, overdue: 3, on_time_rate: 0.25 });
  assert.equal(rows.at(-1).own, true);
  assert.deepEqual(logic.incidentTotals(answer), { reported: 30, closed: 20, overdue: 4, on_time_rate: 0.8 });
  assert.deepEqual(logic.incidentRows({}), []);
  assert.deepEqual(logic.incidentTotals(null), { reported: 0, closed: 0, overdue: 0, on_time_rate: null });
  assert.equal(logic.percent(0.875), '87.5%');
  assert.equal(logic.percent(null), '—');
});

test('the incidents period is the last 30 days, and the page says so', () => {
  const now = Date.UTC(2026, 5, 30, 4, 0, 0);
  assert.equal(logic.INCIDENT_DAYS, 30);
  assert.equal(logic.periodFrom(now), now - 30 * 86400e3);
  assert.equal(logic.periodFrom(now, 7), now - 7 * 86400e3);
  assert.equal(say('zh-CN', 'cockpit.incidents_period', { days: 30, from: '2026-05-31' }),
    '近 30 天（2026-05-31 起）上报与办结的事件；超期为此刻所有超期未办结的事件，不论何时上报。');
  assert.match(say('en', 'cockpit.incidents_period', { days: 30, from: '2026-05-31' }), /last 30 days \(since 2026-05-31\)/);
});

test('stations: counts by status, and the ones in trouble faulty first, silent longest first', () => {
  const devices = [
    { id: 'a', name: '甲', status: 'online', last_seen: 100 },
    { id: 'b', name: '乙', status: 'stale', last_seen: 50 },
    { id: 'c@V1', name: '丙', status: 'faulty', last_seen: 90, origin: 'V1' },
    { id: 'd', name: '丁', status: 'unknown', last_seen: null },
    { id: 'e', name: '戊', status: 'stale', last_seen: 10 },
    { id: 'f', name: '己', status: 'weird', last_seen: 5 },
  ];
  assert.deepEqual(logic.stationCounts(devices), { total: 6, online: 1, stale: 2, faulty: 1, unknown: 2 });
  const trouble = logic.troubledStations(devices);
  assert.deepEqual(trouble.map((d) => d.id), ['c@V1', 'e', 'b', 'd', 'f']);
  assert.equal(trouble.at(-1).status, 'unknown', 'a status the page does not know is shown as unknown');
  assert.deepEqual(logic.troubledStations(undefined), []);
});

test('warnings: only standing ones, red first, newest first within a level', () => {
  const list = [
    { id: '1', level: 'blue', state: 'issued', issued_ms: 300, updated_ms: 300 },
    { id: '2', level: 'red', state: 'issued', issued_ms: 100, updated_ms: 100 },
    { id: '3', level: 'red', state: 'raised', issued_ms: null, onset_ms: 200, updated_ms: 250 },
    { id: '4', level: 'orange', state: 'cancelled', issued_ms: 400, updated_ms: 400 },
    { id: '5', level: 'yellow', state: 'raised', issued_ms: null, onset_ms: null, updated_ms: 150 },
    { id: '6', level: null, state: 'issued', issued_ms: 500, updated_ms: 500 },
  ];
  const active = logic.activeWarnings(list);
  assert.deepEqual(active.map((w) => w.id), ['3', '2', '5', '1', '6']);
  assert.equal(logic.warningSince(list[2]), 200, 'a raised warning: its onset');
  assert.equal(logic.warningSince(list[4]), 150, 'else its last change');
  assert.equal(logic.warningSince(list[0]), 300);
  assert.deepEqual(logic.levelCounts(active), { blue: 1, yellow: 1, orange: 0, red: 2 });
  assert.deepEqual(logic.OPEN_STATES, ['raised', 'issued']);
});

test('a section refused by the node says so without a retry; anything else offers one', () => {
  assert.equal(logic.failureKind({ status: 403 }), 'forbidden');
  assert.equal(logic.failureKind({ status: 0 }), 'failed');
  assert.equal(logic.failureKind({ status: 500 }), 'failed');
  assert.equal(logic.failureKind(new Error('boom')), 'failed');
  assert.equal(texts['zh-CN']['cockpit.forbidden'], '无权限查看');
  assert.equal(logic.REFRESH_MS, 30000);
});

test('overdue counts every incident open past its deadline now, not only those reported in the period', () => {
  const period = { area: '330723', total: { reported: 5, closed: 2, overdue_open: 1 },
    per_area: { '330723001': { reported: 5, closed: 2, overdue_open: 1 } } };
  const allTime = { area: '330723', total: { reported: 90, closed: 80, overdue_open: 4 },
    per_area: { '330723001': { reported: 60, overdue_open: 1 }, '330723002': { reported: 30, overdue_open: 3 } } };
  const { rows, totals } = logic.withOverdueNow(logic.incidentRows(period), logic.incidentTotals(period), allTime);
  assert.deepEqual(rows.map((r) => [r.area, r.reported, r.overdue]), [['330723002', 0, 3], ['330723001', 5, 1]]);
  assert.deepEqual(totals, { reported: 5, closed: 2, overdue: 4, on_time_rate: null });
  const none = logic.withOverdueNow([], logic.incidentTotals(null), null);
  assert.deepEqual(none, { rows: [], totals: { reported: 0, closed: 0, overdue: 0, on_time_rate: null } });
});
