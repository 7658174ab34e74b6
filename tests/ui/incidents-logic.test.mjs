// The incident pages' browser-free rules (ui/js/incidents-logic.js): names before codes, the category's
// default deadline, assisting departments without the lead, how late an overdue item is, the order
// of candidate originals for a duplicate, and the named area a point lies in. Run with
// `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');

// Loaded from its text, as map-logic.test.mjs does: ui/ has no package.json saying .js is ESM.
async function load(...path) {
  const source = readFileSync(join(UI, ...path), 'utf8');
  return import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);
}
const logic = await load('js', 'incidents-logic.js');

const HOUR = 3600000;
const DEPARTMENTS = [{ id: 'emergency', name: '应急管理' }, { id: 'water', name: '水利' }, { id: 'housing', name: '住房建设' }];
const CATEGORIES = [
  { name: '安全隐患', accept_within_minutes: 120, resolve_within_minutes: 4320 },
  { name: '矛盾纠纷', accept_within_minutes: 1440, resolve_within_minutes: 10080 },
];

test('an area shows the name the node sent, else the directory\'s, else its code', () => {
  const dir = new Map([['330723001001', '王宅村']]);
  assert.deepEqual(logic.areaText('330723001001', '王宅村', null), { text: '王宅村', code: '330723001001', named: true });
  assert.deepEqual(logic.areaText('330723001001', null, dir), { text: '王宅村', code: '330723001001', named: true });
  assert.deepEqual(logic.areaText('330723001002', null, dir), { text: '330723001002', code: '330723001002', named: false });
  assert.deepEqual(logic.areaText('330723001002', '  ', dir).text, '330723001002', 'a blank name is no name');
  assert.equal(logic.areaText(undefined, null, dir).text, '');
});

test('a person shows the display name, else the username; a department its name, else the catalog\'s, else the id', () => {
  assert.equal(logic.personText('王芳', 'grid.wang'), '王芳');
  assert.equal(logic.personText(null, 'grid.wang'), 'grid.wang');
  assert.equal(logic.personText('', 'system'), 'system');
  assert.equal(logic.departmentText('water', '水利局', DEPARTMENTS), '水利局');
  assert.equal(logic.departmentText('water', null, DEPARTMENTS), '水利');
  assert.equal(logic.departmentText('gone', null, DEPARTMENTS), 'gone');
  assert.equal(logic.departmentText('water', null, undefined), 'water');
});

test('the areas to choose are the named ones inside the person\'s, township before its villages', () => {
  const areas = [
    { code: '330723001002', name: '下杨村' }, { code: '330723', name: '武义县' },
    { code: '330723001', name: '熟溪街道' }, { code: '330723001001', name: '王宅村' }, { code: '330723002001', name: '别处' },
  ];
  assert.deepEqual(logic.areasWithin(areas, '330723001').map((a) => a.code), ['330723001', '330723001001', '330723001002']);
  assert.deepEqual(logic.areasWithin(areas, '330723001001').map((a) => a.name), ['王宅村']);
  assert.deepEqual(logic.areasWithin(null, '330723001'), []);
});

test('the default deadline is now plus the category\'s time to resolve, and says how long that is', () => {
  const now = Date.UTC(2026, 11, 1, 8, 0);
  const d = logic.defaultDeadline('安全隐患', CATEGORIES, now);
  assert.equal(d.ms, now + 72 * HOUR);
  assert.equal(d.minutes, 4320);
  assert.equal(d.category, '安全隐患');
  assert.equal(logic.defaultDeadline('没有这个类别', CATEGORIES, now), null);
  assert.equal(logic.defaultDeadline('安全隐患', [{ name: '安全隐患', resolve_within_minutes: 0 }], now), null);
  // Up to three days in hours (72 小时), beyond in days, under an hour in minutes.
  assert.deepEqual(logic.durationParts(4320), { n: 72, unit: 'hours' });
  assert.deepEqual(logic.durationParts(1440), { n: 24, unit: 'hours' });
  assert.deepEqual(logic.durationParts(10080), { n: 7, unit: 'days' });
  assert.deepEqual(logic.durationParts(90), { n: 1.5, unit: 'hours' });
  assert.deepEqual(logic.durationParts(45), { n: 45, unit: 'minutes' });
});

test('a datetime-local value is the local time to the minute', () => {
  const d = new Date(2026, 0, 5, 7, 3, 59);
  assert.equal(logic.localInputValue(d.getTime()), '2026-01-05T07:03');
  // And reads back as the same local minute.
  assert.equal(new Date(logic.localInputValue(d.getTime())).getTime(), new Date(2026, 0, 5, 7, 3).getTime());
});

test('assisting departments never include the lead, and keep catalog order', () => {
  assert.deepEqual(logic.assistChoices(DEPARTMENTS, 'water').map((d) => d.id), ['emergency', 'housing']);
  assert.deepEqual(logic.assistChoices(DEPARTMENTS, '').map((d) => d.id), ['emergency', 'water', 'housing']);
  // Ticked before it became the lead: dropped.
  assert.deepEqual(logic.assistSelection(DEPARTMENTS, new Set(['housing', 'water', 'emergency']), 'water'), ['emergency', 'housing']);
  assert.deepEqual(logic.assistSelection(DEPARTMENTS, ['housing', 'housing', 'unknown'], 'emergency'), ['housing']);
});

test('lateness: none before the due time, then minutes, hours, days, never zero', () => {
  const due = Date.UTC(2026, 11, 1, 8, 0);
  assert.equal(logic.lateness(due, due), null);
  assert.equal(logic.lateness(due, due - 1), null);
  assert.equal(logic.lateness(null, due), null);
  assert.deepEqual(logic.lateness(due, due + 1000), { minutes: 0, n: 1, unit: 'minutes' });
  assert.deepEqual(logic.lateness(due, due + 59 * 60000), { minutes: 59, n: 59, unit: 'minutes' });
  assert.equal(logic.lateness(due, due + 3 * HOUR + 20 * 60000).n, 3);
  assert.equal(logic.lateness(due, due + 3 * HOUR).unit, 'hours');
  assert.equal(logic.lateness(due, due + 47 * HOUR).unit, 'hours');
  assert.deepEqual(logic.lateness(due, due + 50 * HOUR), { minutes: 3000, n: 2, unit: 'days' });
});

test('candidate originals: same category and village first, then other open ones, newest first; never itself or a duplicate', () => {
  const subject = { id: 's', category: '安全隐患', area: '330723001001' };
  const rows = [
    { id: 'old-alike', category: '安全隐患', area: '330723001001', state: 'accepted', created_ms: 1 },
    { id: 'other-open', category: '环境卫生', area: '330723001001', state: 'reported', created_ms: 9 },
    { id: 'closed-alike', category: '安全隐患', area: '330723001001', state: 'closed', created_ms: 8 },
    { id: 's', category: '安全隐患', area: '330723001001', state: 'reported', created_ms: 10 },
    { id: 'dup', category: '安全隐患', area: '330723001001', state: 'duplicate', duplicate_of: 'old-alike', created_ms: 7 },
    { id: 'new-alike', category: '安全隐患', area: '330723001001', state: 'dispatched', created_ms: 5 },
    { id: 'other-village', category: '安全隐患', area: '330723001002', state: 'reported', created_ms: 6 },
    { id: 'new-alike', category: '安全隐患', area: '330723001001', state: 'dispatched', created_ms: 5 },
  ];
  assert.deepEqual(logic.rankCandidates(rows, subject).map((i) => i.id),
    ['new-alike', 'old-alike', 'other-open', 'other-village', 'closed-alike']);
  assert.deepEqual(logic.rankCandidates(null, subject), []);
});

const square = (code, name, lon, lat, d) => ({
  type: 'Feature', properties: { code, name },
  geometry: { type: 'Polygon', coordinates: [[[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]] },
});

test('a point names the most specific area it lies in', () => {
  const outlines = { type: 'FeatureCollection', features: [
    square('330723001', '熟溪街道', 119.7, 28.8, 0.2), square('330723001001', '王宅村', 119.8, 28.9, 0.02),
  ] };
  assert.deepEqual(logic.areaAt(outlines, 28.91, 119.81), { code: '330723001001', name: '王宅村' });
  assert.deepEqual(logic.areaAt(outlines, 28.85, 119.75), { code: '330723001', name: '熟溪街道' });
  assert.equal(logic.areaAt(outlines, 30, 120), null);
  assert.equal(logic.areaAt(null, 28.91, 119.81), null);
  const holed = { type: 'FeatureCollection', features: [{
    type: 'Feature', properties: { code: 'x', name: 'X' },
    geometry: { type: 'MultiPolygon', coordinates: [[[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[4, 4], [6, 4], [6, 6], [4, 6], [4, 4]]]] },
  }] };
  assert.equal(logic.areaAt(holed, 5, 5), null, 'inside the hole');
  assert.equal(logic.areaAt(holed, 2, 2).code, 'x');
});

test('open reports near a place, nearest first, within the distance only', () => {
  const pt = (id, lon, lat) => ({ type: 'Feature', id, properties: { title: id }, geometry: { type: 'Point', coordinates: [lon, lat] } });
  const fc = { type: 'FeatureCollection', features: [pt('far', 119.9, 28.9), pt('near', 119.8011, 28.9), pt('here', 119.8, 28.9), { type: 'Feature', geometry: null }] };
  const close = logic.nearbyReports(fc, 28.9, 119.8, 300);
  assert.deepEqual(close.map((c) => c.feature.id), ['here', 'near']);
  assert.equal(close[0].meters, 0);
  assert.ok(close[1].meters > 90 && close[1].meters < 120, `about 107 m, got ${close[1].meters}`);
  assert.deepEqual(logic.nearbyReports(fc, NaN, 119.8, 300), []);
});
