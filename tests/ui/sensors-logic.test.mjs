// The sensors pages' rules (ui/js/sensors-logic.js): whose a station is and the child it came through,
// the list's filters as they
// stand in the address, the groups a county's hundreds of stations are shown in, and the merge of a
// fresh read of the stations below into a list whose own stations are live. Run with
// `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');

// Loaded from their text, as i18n.test.mjs does: ui/ has no package.json saying .js is ESM.
const load = (path) => import(`data:text/javascript;base64,${Buffer.from(readFileSync(join(UI, 'js', path), 'utf8')).toString('base64')}`);
const logic = await load('sensors-logic.js');
const texts = { 'zh-CN': (await load('i18n/zh-CN.js')).default, en: (await load('i18n/en.js')).default };

const station = (id, extra = {}) => ({ id, name: id, area: '330723', status: 'online', points: [{ metric: 'water_level' }], ...extra });
// This county's own station, two of 城关镇's (one in a village of it) and one of 王宅村, a village
// node under 城关镇.
const devices = [
  station('rain-01', { origin: null, node_name: '武义县', area: '330723', name: '县城雨量站' }),
  station('wl-01@T1', { device: 'wl-01', origin: 'T1', via: 'T1', via_name: '城关镇', node_name: '城关镇', area: '330723001002', name: '熟溪水位站', status: 'stale' }),
  station('wl-02@T1', { device: 'wl-02', origin: 'T1', via: 'T1', via_name: '城关镇', node_name: '城关镇', area: '330723001001', name: '桥下水位站' }),
  station('wl-01@V1', { device: 'wl-01', origin: 'V1', via: 'T1', via_name: '城关镇', node_name: '王宅村', area: '330723001001', name: '王宅水位站', status: 'unknown' }),
];

test('a station is this node\'s when it has no origin; ids below carry their node after an @', () => {
  assert.equal(logic.isTree(devices[0]), false);
  assert.equal(logic.isTree(devices[1]), true);
  assert.equal(logic.isTree({ origin: '' }), false);
  assert.equal(logic.isTreeId('wl-01@T1'), true);
  assert.equal(logic.isTreeId('sim-river'), false);
  assert.equal(logic.nodeKey(devices[0]), logic.LOCAL);
  assert.equal(logic.nodeKey(devices[3]), 'V1');
});

test('a station below names the child it came through, when that is not its own node', () => {
  assert.deepEqual(logic.viaOf(devices[3]), { id: 'T1', name: '城关镇' });
  assert.equal(logic.viaOf(devices[1]), null, 'a direct child\'s station: its node is the child');
  assert.equal(logic.viaOf(devices[0]), null, 'this node\'s own');
  assert.deepEqual(logic.viaOf({ origin: 'V1', via: 'T1', via_name: null }), { id: 'T1', name: null }, 'no name: the page shows the id');
  assert.deepEqual(logic.viaOf({ origin: 'V1', via: 'T1', via_name: '  ' }), { id: 'T1', name: null });
  assert.equal(logic.viaOf({ origin: 'V1' }), null, 'an older node that does not say');
  const fill = (lang, key, params) => texts[lang][key].replace(/\{([a-z_]+)\}/g, (whole, name) => String(params[name] ?? whole));
  assert.equal(fill('zh-CN', 'sensors.via', { name: '城关镇' }), '经 城关镇');
  assert.equal(fill('en', 'sensors.via', { name: '城关镇' }), 'via 城关镇');
  for (const lang of ['zh-CN', 'en']) assert.ok(texts[lang]['sensors.via_node'], `${lang} sensors.via_node`);
});

test('filters come from the address, unknown values as the defaults, and go back without defaults', () => {
  const f = logic.readFilter(new URLSearchParams('scope=tree&node=T1&status=problem'));
  assert.deepEqual(f, { scope: 'tree', node: 'T1', status: 'problem' });
  assert.deepEqual(logic.readFilter(new URLSearchParams('scope=everything&status=bad')), { scope: 'all', node: '', status: '' });
  assert.deepEqual(logic.readFilter(null), { scope: 'all', node: '', status: '' });
  assert.equal(logic.readFilter(new URLSearchParams('scope=local&node=T1')).node, '', 'a node below is not in this node\'s scope');
  assert.equal(logic.readFilter(new URLSearchParams('scope=tree&node=local')).node, '');
  assert.equal(logic.readFilter(new URLSearchParams('scope=local&node=local')).node, 'local');
  assert.equal(logic.filterQuery(f), '?scope=tree&node=T1&status=problem');
  assert.equal(logic.filterQuery({ scope: 'all', node: '', status: '' }), '');
});

test('scope, node and status filter the list', () => {
  const ids = (filter) => devices.filter((d) => logic.matches(d, { scope: 'all', node: '', status: '', ...filter })).map((d) => d.id);
  assert.deepEqual(ids({ scope: 'local' }), ['rain-01']);
  assert.deepEqual(ids({ scope: 'tree' }), ['wl-01@T1', 'wl-02@T1', 'wl-01@V1']);
  assert.deepEqual(ids({ node: 'T1' }), ['wl-01@T1', 'wl-02@T1']);
  assert.deepEqual(ids({ node: logic.LOCAL }), ['rain-01']);
  assert.deepEqual(ids({ status: 'problem' }), ['wl-01@T1', 'wl-01@V1']);
  assert.deepEqual(ids({ scope: 'local', node: 'T1' }), [], 'a node below is not in this node\'s scope');
});

test('one group per node: this node first, then by area, the stations in a group by area then name', () => {
  const groups = logic.groupStations(devices, { scope: 'all', node: '', status: '' });
  assert.deepEqual(groups.map((g) => [g.key, g.name, g.local]), [['local', '武义县', true], ['T1', '城关镇', false], ['V1', '王宅村', false]]);
  assert.deepEqual(groups.map((g) => g.via), [null, null, { id: 'T1', name: '城关镇' }], 'a village\'s group says its township');
  assert.deepEqual(groups[1].stations.map((d) => d.id), ['wl-02@T1', 'wl-01@T1'], '330723001001 before 330723001002');
  assert.deepEqual(groups[1].counts, { total: 2, online: 1, stale: 1, faulty: 0, unknown: 0, problems: 1 });
  const problems = logic.groupStations(devices, { scope: 'all', node: '', status: 'problem' });
  assert.deepEqual(problems.map((g) => g.key), ['T1', 'V1'], 'groups the filter empties are left out');
  assert.deepEqual(logic.groupStations([], { scope: 'all', node: '', status: '' }), []);
});

test('the node filter names each node once, this node first', () => {
  const nodes = logic.nodesOf(devices);
  assert.deepEqual(nodes.map((n) => [n.key, n.count]), [['local', 1], ['T1', 2], ['V1', 1]]);
  assert.equal(nodes[1].origin, 'T1');
  const unnamed = logic.nodesOf([station('x@V9', { origin: 'V9', node_name: '  ' })]);
  assert.equal(unnamed[0].name, null);
  assert.equal(unnamed[0].via, null);
  // The first station naming the child wins over one that only gives its id.
  const named = logic.nodesOf([station('a@V9', { origin: 'V9', via: 'T2' }), station('b@V9', { origin: 'V9', via: 'T2', via_name: '白洋街道' })]);
  assert.deepEqual(named[0].via, { id: 'T2', name: '白洋街道' });
});

test('a county list opens folded, except this node\'s stations and a node picked', () => {
  const group = { local: false };
  const filter = { scope: 'all', node: '', status: '' };
  assert.equal(logic.groupOpen(group, 12, filter), true, 'a short list opens entirely');
  assert.equal(logic.groupOpen(group, 300, filter), false);
  assert.equal(logic.groupOpen({ local: true }, 300, filter), true);
  assert.equal(logic.groupOpen(group, 300, { ...filter, node: 'T1' }), true);
});

test('a fresh read of the stations below replaces them and keeps this node\'s as the stream left them', () => {
  const live = { ...devices[0], status: 'faulty' };
  const fresh = [{ ...devices[1], status: 'online' }, devices[0]];
  const merged = logic.mergeTree([live, devices[1], devices[2]], fresh);
  assert.deepEqual(merged.map((d) => [d.id, d.status]), [['rain-01', 'faulty'], ['wl-01@T1', 'online']]);
  assert.equal(merged[0], live, 'the same object, so its card keeps updating it');
});

test('a card takes new values in place only while its metrics are the same', () => {
  const a = { points: [{ metric: 'water_level' }, { metric: 'battery' }] };
  assert.equal(logic.sameMetrics(a, { points: [{ metric: 'water_level' }, { metric: 'battery' }] }), true);
  assert.equal(logic.sameMetrics(a, { points: [{ metric: 'battery' }, { metric: 'water_level' }] }), false);
  assert.equal(logic.sameMetrics(a, { points: [{ metric: 'water_level' }] }), false);
  assert.equal(logic.sameMetrics({}, { points: [] }), true);
});

test('the list\'s lines read right in both languages', () => {
  const fill = (lang, key, params) => texts[lang][key].replace(/\{([a-z_]+)\}/g, (whole, name) => String(params[name] ?? whole));
  assert.equal(fill('zh-CN', 'sensors.summary_filtered', { n: 2, total: 4, problems: 1 }), '筛选出 2 个站点（共 4 个），其中 1 个异常');
  assert.equal(fill('en', 'sensors.group_stations_one', { n: 1 }), '1 station');
  assert.equal(fill('en', 'sensors.group_stations', { n: 2 }), '2 stations');
  assert.equal(fill('zh-CN', 'sensors.node_local', { name: '武义县' }), '武义县（本节点）');
  for (const s of logic.STATUSES) {
    for (const lang of ['zh-CN', 'en']) assert.ok(texts[lang][`sensors.status_help_tree.${s}`], `${lang} sensors.status_help_tree.${s}`);
  }
  for (const s of logic.SCOPES) {
    for (const lang of ['zh-CN', 'en']) assert.ok(texts[lang][`sensors.scope.${s}`], `${lang} sensors.scope.${s}`);
  }
});
