// The maps' browser-free rules (ui/js/map-logic.js): the node's map settings read defensively, the view
// each map opens on, when the base map is given up, marker colours and popups built from text nodes;
// and the vendored Leaflet files still the ones ui/vendor/README.md records. Run with
// `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');

// Loaded as a module from its text, as i18n.test.mjs does: ui/ has no package.json saying .js is ESM.
async function load(...path) {
  const source = readFileSync(join(UI, ...path), 'utf8');
  return import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);
}
const logic = await load('js', 'map-logic.js');
const zh = (await load('js', 'i18n', 'zh-CN.js')).default;
const labels = logic.mergeLabels({});

const point = (lon, lat, properties = {}, id = undefined) =>
  ({ type: 'Feature', ...(id === undefined ? {} : { id }), properties, geometry: { type: 'Point', coordinates: [lon, lat] } });
const square = (lon, lat, d, properties = {}) => ({
  type: 'Feature', properties,
  geometry: { type: 'Polygon', coordinates: [[[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]] },
});
const fc = (...features) => ({ type: 'FeatureCollection', features });

test('missing texts fall back to Chinese, given ones are kept', () => {
  const l = logic.mergeLabels({ noBaseMap: 'No base map', open: '', due: { overdue: 'Overdue' }, states: { archived: 'Archived' } });
  assert.equal(l.noBaseMap, 'No base map');
  assert.equal(l.open, '查看详情');
  assert.equal(l.pin, '所选位置');
  assert.equal(l.due.overdue, 'Overdue');
  assert.equal(l.due.near, '即将超期');
  assert.equal(l.states.reported, '已上报');
  assert.equal(l.states.archived, 'Archived');
  assert.deepEqual(logic.mergeLabels(null), logic.mergeLabels(undefined));
  assert.equal(logic.fillCount(l.capped, 500), '只显示前 500 个');
});

test('the default state and deadline texts are the UI dictionary\'s', () => {
  for (const [state, text] of Object.entries(labels.states)) assert.equal(text, zh[`state.${state}`], state);
  for (const [due, text] of Object.entries(labels.due)) assert.equal(text, zh[`due.${due}`], due);
});

test('tile settings: the node\'s path or an http(s) address with {z}/{x}/{y}, else the plain map', () => {
  const ok = logic.tileSettings({ url: '/api/v1/map/tiles/{z}/{x}/{y}', min_zoom: 0, max_zoom: 18, attribution: '© 测绘' });
  assert.deepEqual(ok, { url: '/api/v1/map/tiles/{z}/{x}/{y}', minZoom: 0, maxZoom: 18, attribution: '© 测绘' });
  assert.equal(logic.tileSettings({ url: 'https://{s}.tiles.example/{z}/{x}/{y}.png' }).maxZoom, 18);
  assert.equal(logic.tileSettings({ url: 'http://10.0.0.5/{z}/{x}/{y}.png', min_zoom: 12, max_zoom: 5 }).maxZoom, 12);
  for (const bad of [null, undefined, 'x', {}, { url: 42 }, { url: '' },
    { url: 'javascript:alert(1)//{z}/{x}/{y}' }, { url: '//evil.example/{z}/{x}/{y}' },
    { url: 'data:image/png;base64,{z}{x}{y}' }, { url: '/tiles/{z}/{x}' }, { url: '/tiles/{z}/{x}/{y}?key={key}' }]) {
    assert.equal(logic.tileSettings(bad), null, JSON.stringify(bad));
  }
});

test('the map settings as the node sends them, and nonsense read as "none"', () => {
  const c = logic.readConfig({
    tiles: { url: '/api/v1/map/tiles/{z}/{x}/{y}', min_zoom: 0, max_zoom: 18, attribution: '…' },
    center: [29.0, 120.2], zoom: 13,
    outlines: fc(square(120.1, 28.9, 0.1, { code: '330723001', name: '熟溪街道' })),
  });
  assert.equal(c.tiles.url, '/api/v1/map/tiles/{z}/{x}/{y}');
  assert.deepEqual(c.center, [29.0, 120.2]);
  assert.equal(c.zoom, 13);
  assert.equal(c.outlines.features.length, 1);
  const plain = logic.readConfig({ tiles: null, center: null, zoom: 13, outlines: fc() });
  assert.equal(plain.tiles, null);
  assert.equal(plain.center, null);
  assert.deepEqual([plain.minZoom, plain.maxZoom], [logic.PLAIN_MIN_ZOOM, logic.PLAIN_MAX_ZOOM]);
  for (const junk of [null, 'x', [], { center: [200, 0], zoom: 'x', outlines: 'x', tiles: 'x' }]) {
    const j = logic.readConfig(junk);
    assert.equal(j.tiles, null);
    assert.equal(j.center, null);
    assert.equal(j.zoom, logic.DEFAULT_ZOOM);
    assert.deepEqual(j.outlines.features, []);
  }
  assert.equal(logic.readConfig({ zoom: 30 }).zoom, logic.PLAIN_MAX_ZOOM);
  const gone = logic.plainConfig(c);
  assert.equal(gone.tiles, null);
  assert.equal(gone.outlines, c.outlines);
});

test('only drawable polygons are kept as outlines', () => {
  const multi = { type: 'Feature', properties: {}, geometry: { type: 'MultiPolygon', coordinates: [square(1, 1, 1).geometry.coordinates] } };
  const kept = logic.validOutlines(fc(square(120, 29, 0.1), multi,
    point(120, 29),
    { type: 'Feature', geometry: { type: 'Polygon', coordinates: [[[120, 29], [121, 29]]] } },
    { type: 'Feature', geometry: { type: 'Polygon', coordinates: [[[120, 29], [121, 29], [121, 95], [120, 29]]] } },
    { type: 'Feature', geometry: null }, null));
  assert.equal(kept.features.length, 2);
  assert.deepEqual(logic.validOutlines(null).features, []);
});

test('the base map is given up only when no tile has loaded', () => {
  assert.equal(logic.tilesFailed({ loaded: 0, failed: 0, settled: true }), false);
  assert.equal(logic.tilesFailed({ loaded: 0, failed: 1, settled: false }), false);
  assert.equal(logic.tilesFailed({ loaded: 0, failed: 1, settled: true }), true);
  assert.equal(logic.tilesFailed({ loaded: 0, failed: logic.TILE_FAIL_LIMIT, settled: false }), true);
  // A tile server covering only the township fails outside it; its map is kept.
  assert.equal(logic.tilesFailed({ loaded: 4, failed: 40, settled: true }), false);
});

test('points: located Point features only, at most the limit', () => {
  const features = fc(point(120.1, 29.1), point(200, 29), { type: 'Feature', geometry: null }, point('x', 1),
    square(120, 29, 0.1), point(120.2, 29.2), point(120.3, 29.3));
  assert.deepEqual(logic.pointsOf(features).map((p) => [p.lat, p.lon]), [[29.1, 120.1], [29.2, 120.2], [29.3, 120.3]]);
  assert.equal(logic.pointsOf(features, 2).length, 2);
  assert.equal(logic.pointCount(features), 3);
  assert.deepEqual(logic.pointsOf(null), []);
});

test('bounds around points and polygons', () => {
  assert.deepEqual(logic.boundsOf(fc(point(120.1, 29.1), point(120.3, 28.9))), [[28.9, 120.1], [29.1, 120.3]]);
  assert.deepEqual(logic.boundsOf(fc(square(120, 29, 0.5))), [[29, 120], [29.5, 120.5]]);
  assert.equal(logic.boundsOf(fc()), null);
  assert.equal(logic.boundsOf(undefined), null);
});

test('the incident map opens on its points, else the outlines, else the centre, else China', () => {
  const outlines = fc(square(120, 29, 0.5));
  const config = logic.readConfig({ center: [29.2, 120.2], zoom: 12, outlines });
  const points = fc(point(120.1, 29.1), point(120.3, 29.3));
  assert.deepEqual(logic.incidentsView(points, config), { bounds: [[29.1, 120.1], [29.3, 120.3]], maxZoom: logic.PLACE_ZOOM });
  assert.deepEqual(logic.incidentsView(fc(), config).bounds, [[29, 120], [29.5, 120.5]]);
  const noOutlines = logic.readConfig({ center: [29.2, 120.2], zoom: 12 });
  assert.deepEqual(logic.incidentsView(fc(), noOutlines), { center: [29.2, 120.2], zoom: 12 });
  assert.deepEqual(logic.incidentsView(null, logic.readConfig(null)), logic.FALLBACK_VIEW);
});

test('the report map opens on the pin, else the given centre, the configured one, outlines, nearby, China', () => {
  const config = logic.readConfig({ center: [29.2, 120.2], zoom: 13, outlines: fc(square(120, 29, 0.5)) });
  assert.deepEqual(logic.pickView({ value: { lat: 29.15, lon: 120.15 }, center: [1, 1] }, config), { center: [29.15, 120.15], zoom: logic.PLACE_ZOOM });
  assert.deepEqual(logic.pickView({ value: { lat: 'x' }, center: [29.3, 120.3] }, config), { center: [29.3, 120.3], zoom: 13 });
  assert.deepEqual(logic.pickView({}, config), { center: [29.2, 120.2], zoom: 13 });
  assert.deepEqual(logic.pickView({}, logic.readConfig({ outlines: config.outlines })).bounds, [[29, 120], [29.5, 120.5]]);
  assert.deepEqual(logic.pickView({ nearby: fc(point(120.1, 29.1)) }, logic.readConfig({})).bounds, [[29.1, 120.1], [29.1, 120.1]]);
  assert.deepEqual(logic.pickView({}, logic.readConfig({})), logic.FALLBACK_VIEW);
});

test('a pick has six decimals and a longitude within -180..180', () => {
  assert.deepEqual(logic.normalizePick(29.123456789, 120.987654321), { lat: 29.123457, lon: 120.987654 });
  assert.deepEqual(logic.normalizePick(29, 120 + 360), { lat: 29, lon: 120 });
  assert.deepEqual(logic.normalizePick(29, -190), { lat: 29, lon: 170 });
  assert.deepEqual(logic.normalizePick(29, 180), { lat: 29, lon: 180 });
  assert.deepEqual(logic.normalizePick(95, 0), { lat: 90, lon: 0 });
  assert.deepEqual(logic.toLatLon({ lat: 29, lon: 120 }), [29, 120]);
  assert.deepEqual(logic.toLatLon([29, 120]), [29, 120]);
  assert.equal(logic.toLatLon({ lat: NaN, lon: 120 }), null);
  assert.equal(logic.toLatLon(null), null);
});

test('colours and legend counts by deadline, overdue drawn last', () => {
  assert.equal(logic.dueColor('ok'), '#1a7f37');
  assert.equal(logic.dueColor('near'), '#e16f24');
  assert.equal(logic.dueColor('overdue'), '#cf222e');
  assert.match(logic.dueColor(undefined), /^#[0-9a-f]{6}$/);
  const app = readFileSync(join(UI, 'css', 'app.css'), 'utf8');
  for (const [name, color] of [['--ok', '#1a7f37'], ['--warn-orange', '#e16f24'], ['--bad', '#cf222e']]) {
    assert.ok(app.includes(`${name}: ${color};`), `app.css ${name} changed; change DUE_COLORS too`);
  }
  const pts = logic.pointsOf(fc(point(1, 1, { due_state: 'overdue' }, 'a'), point(1, 1, { due_state: 'ok' }, 'b'),
    point(1, 1, { due_state: 'near' }, 'c'), point(1, 1, {}, 'd'), point(1, 1, { due_state: 'ok' }, 'e')));
  assert.deepEqual(logic.dueCounts(pts), { ok: 3, near: 1, overdue: 1 });
  assert.deepEqual(logic.drawOrder(pts).map((p) => p.feature.id), ['b', 'd', 'e', 'c', 'a']);
});

test('the incident id is read from the Feature, as the node writes it', () => {
  const rust = readFileSync(join(UI, '..', 'src', 'incidents', 'query.rs'), 'utf8');
  const body = rust.slice(rust.indexOf('pub fn to_geojson'), rust.indexOf('pub fn indicators'));
  assert.match(body, /"id": r\.id/, 'to_geojson no longer puts the id on the Feature');
  for (const key of ['"title"', '"state"', '"category"', '"area"', '"due_state"']) assert.ok(body.includes(key), `to_geojson lacks ${key}`);
  assert.equal(logic.featureId({ id: '01900000-0000-7000-8000-000000000001', properties: {} }), '01900000-0000-7000-8000-000000000001');
  assert.equal(logic.featureId({ properties: { id: 7 } }), '7');
  assert.equal(logic.featureId({ properties: {} }), null);
  assert.equal(logic.incidentHref('a/b?c'), '/incidents/a%2Fb%3Fc');
});

test('popup texts: title, state and village, the deadline when it matters, a link', () => {
  const f = point(120, 29, { title: '路灯坏了', state: 'dispatched', area: '330723001001', area_name: '王宅村', due_state: 'overdue', category: '市政' }, 'abc');
  assert.deepEqual(logic.popupModel(f, labels), {
    title: '路灯坏了', lines: ['已派遣 · 王宅村'], due: { state: 'overdue', text: '已超期' }, href: '/incidents/abc', linkText: '查看详情',
  });
  const older = point(120, 29, { title: 'x', state: 'new_state', area: '330723001001', due_state: 'ok' }, 'abc');
  assert.deepEqual(logic.popupModel(older, labels).lines, ['new_state · 330723001001']);
  const odd = point(120, 29, { title: 'x', state: 'constructor', area: 'a' }, 'abc');
  assert.deepEqual(logic.popupModel(odd, labels).lines, ['constructor · a']);
  assert.equal(logic.popupModel(older, labels).due, null);
  const nearby = logic.popupModel(f, labels, 'nearby');
  assert.deepEqual([nearby.title, nearby.lines, nearby.due], ['路灯坏了', ['市政'], null]);
  assert.equal(logic.popupModel(point(1, 1, {}, 'z'), labels).title, '#z');
  assert.equal(logic.popupModel(point(1, 1, { title: 't' }), labels).href, null);
});

// A stand-in document whose elements refuse innerHTML: popups must be text nodes only.
function fakeDocument() {
  const make = (tag) => {
    const node = {
      tag, className: '', textContent: '', attributes: {}, children: [],
      appendChild(c) { node.children.push(c); return c; },
      setAttribute(k, v) { node.attributes[k] = String(v); },
    };
    for (const prop of ['innerHTML', 'outerHTML']) {
      Object.defineProperty(node, prop, { set() { throw new Error(`${prop} used`); }, get() { throw new Error(`${prop} used`); } });
    }
    node.insertAdjacentHTML = () => { throw new Error('insertAdjacentHTML used'); };
    return node;
  };
  return { createElement: make };
}

test('a popup carries a reporter\'s markup as text, never as HTML', () => {
  const evil = '<img src=x onerror=alert(1)>标题';
  const f = point(120, 29, { title: evil, state: 'reported', area_name: '<b>村</b>', due_state: 'near' }, 'id1');
  const box = logic.popupNode(fakeDocument(), logic.popupModel(f, labels));
  assert.equal(box.className, 'tn-map-popup');
  const [title, line, due, link] = box.children;
  assert.deepEqual([title.tag, title.textContent], ['strong', evil]);
  assert.equal(line.textContent, '已上报 · <b>村</b>');
  assert.deepEqual([due.className, due.textContent], ['tn-map-popup-line due-near', '即将超期']);
  assert.deepEqual([link.tag, link.attributes, link.textContent], ['a', { href: '/incidents/id1', 'data-link': '' }, '查看详情']);
  assert.equal(box.children.length, 4);
});

test('the attribution Leaflet writes as HTML is escaped first', () => {
  assert.equal(logic.escapeHtml('© <a href="x">OSM</a> & \'co\''), '© &lt;a href=&quot;x&quot;&gt;OSM&lt;/a&gt; &amp; &#39;co&#39;');
});

test('map.js hands Leaflet no HTML strings and imports no i18n of its own', () => {
  const source = readFileSync(join(UI, 'js', 'map.js'), 'utf8');
  assert.doesNotMatch(source, /innerHTML|outerHTML|insertAdjacentHTML|document\.write/);
  assert.doesNotMatch(source, /from '\.\/i18n\.js'/);
  assert.doesNotMatch(source, /setAttribute\(\s*'style'/);
});

// ui/vendor/README.md lists each copied file's SHA-256 under its package's heading; the files must
// still be those, or the README and the integrity it records no longer describe what is served.
test('vendored files match the SHA-256 sums in ui/vendor/README.md', () => {
  const readme = readFileSync(join(UI, 'vendor', 'README.md'), 'utf8');
  const sections = [...readme.matchAll(/^## .*? — `([^`]+)\/`$([\s\S]*?)(?=^## |$(?![\s\S]))/gm)];
  const dirs = sections.map((s) => s[1]);
  assert.ok(dirs.includes('leaflet'), `no leaflet section; found ${dirs.join(', ')}`);
  for (const [, dir, body] of sections) {
    const block = /```\n([\s\S]*?)```/.exec(body);
    assert.ok(block, `${dir}: no SHA-256 block`);
    const lines = block[1].trim().split('\n');
    assert.ok(lines.length > 0);
    for (const line of lines) {
      const [sum, file] = line.trim().split(/\s+/);
      const actual = createHash('sha256').update(readFileSync(join(UI, 'vendor', dir, file))).digest('hex');
      assert.equal(actual, sum, `${dir}/${file}`);
    }
  }
});
