// The maps' rules that need no browser (ui/js/map.js draws them with Leaflet): the default texts,
// reading the node's /api/v1/map answer and GeoJSON defensively, which view to open on, whether the
// base map has failed, marker colours, and popups built from text nodes. No imports, so the unit
// tests (tests/ui/map-logic.test.mjs) load it as it is.

// The same colours as app.css (--ok, --warn-orange, --bad); markers are drawn as SVG with Leaflet's
// options, which cannot read CSS variables.
export const DUE_COLORS = { ok: '#1a7f37', near: '#e16f24', overdue: '#cf222e' };
export const DUE_STATES = ['ok', 'near', 'overdue'];
const UNKNOWN_COLOR = '#5b6470';
// Nearby reports on the report form: one plain colour, so they never read as a deadline.
export const NEARBY_COLOR = '#0b5394';

export const DEFAULT_ZOOM = 13;
// Zoom used when the map opens on a single place: a few streets around it.
export const PLACE_ZOOM = 16;
// With nothing to show (no position, no configured centre, no outlines, no points): China, whole.
export const FALLBACK_VIEW = { center: [35, 105], zoom: 4 };
// A plain map has no tiles to bound its zooms; these keep it between a county and a courtyard.
export const PLAIN_MIN_ZOOM = 3;
export const PLAIN_MAX_ZOOM = 19;
// Beyond this an old phone pans slowly; the node's list pages ask for fewer anyway.
export const MAX_POINTS = 500;
// Village names under this zoom overlap each other; they are hidden there (map.css).
export const NAMES_MIN_ZOOM = 11;
// Tile failures, with none loaded, after which the base map is given up without waiting for the rest.
export const TILE_FAIL_LIMIT = 3;

// Chinese first, as the rest of the UI; the pages pass the current language's texts (i18n keys), and
// any text they leave out falls back to these.
export const DEFAULT_LABELS = {
  pickMap: '选择位置的地图。点按地图放置标记，可拖动标记调整；方向键移动地图，加号减号缩放，回车键把标记放在地图中心。',
  incidentsMap: '事件分布地图',
  pin: '所选位置',
  open: '查看详情',
  noBaseMap: '无底图',
  loadFailed: '地图无法加载',
  legend: '办理期限',
  noPoints: '没有带位置的事件',
  capped: '只显示前 {n} 个',
  zoomIn: '放大',
  zoomOut: '缩小',
  close: '关闭',
  states: {
    reported: '已上报', accepted: '已受理', rejected: '不予受理', escalated: '已上报县级',
    dispatched: '已派遣', in_progress: '处置中', resolved: '已办结待核查', closed: '已结案',
  },
  due: { ok: '正常', near: '即将超期', overdue: '已超期' },
};

// The caller's texts over the defaults; an empty or non-string text counts as missing.
export function mergeLabels(labels) {
  const given = labels && typeof labels === 'object' ? labels : {};
  const pick = (value, fallback) => (typeof value === 'string' && value.trim() ? value : fallback);
  const out = {};
  for (const [key, fallback] of Object.entries(DEFAULT_LABELS)) {
    if (typeof fallback === 'string') {
      out[key] = pick(given[key], fallback);
    } else {
      const inner = given[key] && typeof given[key] === 'object' ? given[key] : {};
      out[key] = Object.fromEntries(Object.entries(fallback).map(([k, v]) => [k, pick(inner[k], v)]));
      // States added to the node later still show their own text if the caller has one.
      for (const [k, v] of Object.entries(inner)) if (!(k in out[key]) && typeof v === 'string' && v.trim()) out[key][k] = v;
    }
  }
  return out;
}

export function fillCount(text, n) {
  return String(text).replace('{n}', String(n));
}

// For the few strings Leaflet itself puts into innerHTML (the attribution line): the operator's
// attribution text is shown as text, whatever it contains.
export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function finite(n) {
  return typeof n === 'number' && Number.isFinite(n);
}

export function validLatLon(lat, lon) {
  return finite(lat) && finite(lon) && lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180;
}

// [lat, lon] from a `[lat, lon]` pair or a `{lat, lon}` object, or null.
export function toLatLon(v) {
  if (Array.isArray(v) && v.length >= 2 && validLatLon(v[0], v[1])) return [v[0], v[1]];
  if (v && typeof v === 'object' && !Array.isArray(v) && validLatLon(v.lat, v.lon)) return [v.lat, v.lon];
  return null;
}

// What a tap or a drag gives: six decimals (about 0.1 m, as report.js keeps the phone's position)
// and the longitude brought back into -180..180 when the map was panned round the world.
export function normalizePick(lat, lng) {
  const wrapped = ((((lng + 180) % 360) + 360) % 360) - 180;
  const round = (x) => Number(x.toFixed(6));
  return { lat: round(Math.max(-90, Math.min(90, lat))), lon: round(wrapped === -180 && lng > 0 ? 180 : wrapped) };
}

const TILE_KEYS = new Set(['z', 'x', 'y', 's', 'r']);

// The tile settings to use, or null for the plain map: the URL must be the node's own path or an
// http(s) address and name {z}, {x} and {y} and no other placeholder Leaflet would choke on.
export function tileSettings(tiles) {
  if (!tiles || typeof tiles !== 'object' || typeof tiles.url !== 'string') return null;
  const url = tiles.url.trim();
  if (!/^(\/(?!\/)|https?:\/\/)/i.test(url)) return null;
  const keys = [...url.matchAll(/\{([^}]*)\}/g)].map((m) => m[1]);
  if (!['z', 'x', 'y'].every((k) => keys.includes(k)) || keys.some((k) => !TILE_KEYS.has(k))) return null;
  const zoom = (v, fallback) => (Number.isInteger(v) && v >= 0 && v <= 24 ? v : fallback);
  const minZoom = zoom(tiles.min_zoom, 0);
  const maxZoom = Math.max(minZoom, zoom(tiles.max_zoom, 18));
  const attribution = typeof tiles.attribution === 'string' ? tiles.attribution.trim() : '';
  return { url, minZoom, maxZoom, attribution };
}

// Only Polygon and MultiPolygon features with a geometry Leaflet can draw (a bad one would throw and
// take the whole map with it).
export function validOutlines(fc) {
  const ring = (r) => Array.isArray(r) && r.length >= 4 && r.every((p) => Array.isArray(p) && validLatLon(p[1], p[0]));
  const polygon = (rings) => Array.isArray(rings) && rings.length > 0 && rings.every(ring);
  const features = (fc && Array.isArray(fc.features) ? fc.features : []).filter((f) => {
    const g = f && f.geometry;
    if (!g) return false;
    if (g.type === 'Polygon') return polygon(g.coordinates);
    if (g.type === 'MultiPolygon') return Array.isArray(g.coordinates) && g.coordinates.length > 0 && g.coordinates.every(polygon);
    return false;
  });
  return { type: 'FeatureCollection', features };
}

// The node's /api/v1/map answer made safe to use; anything missing or malformed reads as "none".
export function readConfig(raw) {
  const r = raw && typeof raw === 'object' ? raw : {};
  const tiles = tileSettings(r.tiles);
  const minZoom = tiles ? tiles.minZoom : PLAIN_MIN_ZOOM;
  const maxZoom = tiles ? tiles.maxZoom : PLAIN_MAX_ZOOM;
  const zoom = Number.isInteger(r.zoom) ? Math.max(minZoom, Math.min(maxZoom, r.zoom)) : Math.max(minZoom, Math.min(maxZoom, DEFAULT_ZOOM));
  return { tiles, center: toLatLon(r.center), zoom, minZoom, maxZoom, outlines: validOutlines(r.outlines) };
}

// The settings without tiles, once the tiles have failed: zooms as the plain map's.
export function plainConfig(config) {
  return { ...config, tiles: null, minZoom: PLAIN_MIN_ZOOM, maxZoom: PLAIN_MAX_ZOOM };
}

// Whether to give up the base map: only when no tile has loaded at all, so a tile server that covers
// just the township (and fails outside it) keeps its map. `settled` is true once Leaflet has tried
// every tile in view.
export function tilesFailed({ loaded, failed, settled }) {
  return loaded === 0 && failed > 0 && (settled || failed >= TILE_FAIL_LIMIT);
}

// Point features as { lat, lon, feature }, at most `max`; others are skipped.
export function pointsOf(fc, max = MAX_POINTS) {
  const out = [];
  for (const f of fc && Array.isArray(fc.features) ? fc.features : []) {
    const g = f && f.geometry;
    if (!g || g.type !== 'Point' || !Array.isArray(g.coordinates)) continue;
    const [lon, lat] = g.coordinates;
    if (!validLatLon(lat, lon)) continue;
    if (out.length >= max) break;
    out.push({ lat, lon, feature: f });
  }
  return out;
}

// How many located features there are, to say when only the first `max` are drawn.
export function pointCount(fc) {
  return pointsOf(fc, Infinity).length;
}

function eachPosition(coords, fn) {
  if (!Array.isArray(coords)) return;
  if (coords.length >= 2 && typeof coords[0] === 'number') fn(coords[1], coords[0]);
  else for (const c of coords) eachPosition(c, fn);
}

// [[south, west], [north, east]] around every position of a FeatureCollection, or null.
export function boundsOf(fc) {
  let s = Infinity; let w = Infinity; let n = -Infinity; let e = -Infinity;
  for (const f of fc && Array.isArray(fc.features) ? fc.features : []) {
    eachPosition(f && f.geometry && f.geometry.coordinates, (lat, lon) => {
      if (!validLatLon(lat, lon)) return;
      s = Math.min(s, lat); n = Math.max(n, lat); w = Math.min(w, lon); e = Math.max(e, lon);
    });
  }
  return s === Infinity ? null : [[s, w], [n, e]];
}

// The incident list's view: its points, else the outlines, else the configured centre, else China.
export function incidentsView(features, config) {
  const points = boundsOf({ features: pointsOf(features).map((p) => p.feature) });
  if (points) return { bounds: points, maxZoom: Math.min(PLACE_ZOOM, config.maxZoom) };
  const outlines = boundsOf(config.outlines);
  if (outlines) return { bounds: outlines, maxZoom: Math.min(PLACE_ZOOM, config.maxZoom) };
  if (config.center) return { center: config.center, zoom: config.zoom };
  return fallbackView(config);
}

// The report form's view: the picked place, else the caller's centre (the phone's position), else
// the configured centre, else the outlines, else the nearby reports, else China.
export function pickView({ value, center, nearby }, config) {
  const picked = toLatLon(value);
  if (picked) return { center: picked, zoom: Math.max(config.zoom, Math.min(PLACE_ZOOM, config.maxZoom)) };
  const given = toLatLon(center);
  if (given) return { center: given, zoom: config.zoom };
  if (config.center) return { center: config.center, zoom: config.zoom };
  const outlines = boundsOf(config.outlines);
  if (outlines) return { bounds: outlines, maxZoom: Math.min(PLACE_ZOOM, config.maxZoom) };
  const points = boundsOf({ features: pointsOf(nearby).map((p) => p.feature) });
  if (points) return { bounds: points, maxZoom: Math.min(PLACE_ZOOM, config.maxZoom) };
  return fallbackView(config);
}

function fallbackView(config) {
  return { center: FALLBACK_VIEW.center, zoom: Math.max(config.minZoom, Math.min(config.maxZoom, FALLBACK_VIEW.zoom)) };
}

export function dueColor(dueState) {
  return DUE_COLORS[dueState] || UNKNOWN_COLOR;
}

// Markers per deadline state, for the legend.
export function dueCounts(points) {
  const counts = { ok: 0, near: 0, overdue: 0 };
  for (const p of points) {
    const d = p.feature.properties && p.feature.properties.due_state;
    counts[DUE_STATES.includes(d) ? d : 'ok'] += 1;
  }
  return counts;
}

// Points in drawing order: overdue last, so it lands on top where dots overlap; otherwise as given.
export function drawOrder(points) {
  const rank = (p) => Math.max(0, DUE_STATES.indexOf(p.feature.properties && p.feature.properties.due_state));
  return points.map((p, i) => [p, i]).sort((a, b) => rank(a[0]) - rank(b[0]) || a[1] - b[1]).map(([p]) => p);
}

// The node puts an incident's id on the Feature (src/incidents/query.rs `to_geojson`); a
// properties.id is read too.
export function featureId(f) {
  const id = f && (f.id ?? (f.properties && f.properties.id));
  return typeof id === 'string' || typeof id === 'number' ? String(id) : null;
}

export function incidentHref(id) {
  return `/incidents/${encodeURIComponent(id)}`;
}

function text(v) {
  return typeof v === 'string' ? v.trim() : typeof v === 'number' ? String(v) : '';
}

// What a popup says, as plain strings: popupNode turns them into text nodes. `kind` is 'incident'
// (state and village, then the deadline when it is near or past) or 'nearby' (the category).
export function popupModel(feature, labels, kind = 'incident') {
  const p = (feature && feature.properties) || {};
  const id = featureId(feature);
  const lines = [];
  let due = null;
  if (kind === 'nearby') {
    if (text(p.category)) lines.push(text(p.category));
  } else {
    const state = text(p.state) ? (Object.hasOwn(labels.states, p.state) && labels.states[p.state]) || text(p.state) : '';
    const where = text(p.area_name) || text(p.area);
    const first = [state, where].filter(Boolean).join(' · ');
    if (first) lines.push(first);
    if (p.due_state === 'near' || p.due_state === 'overdue') due = { state: p.due_state, text: labels.due[p.due_state] };
  }
  return {
    title: text(p.title) || (id ? `#${id}` : ''),
    lines,
    due,
    href: id ? incidentHref(id) : null,
    linkText: labels.open,
  };
}

// The popup as DOM nodes, every string set as textContent (titles are typed by reporters).
// `doc` is the document to build in, so the tests can pass a stand-in.
export function popupNode(doc, model) {
  const node = (tag, className, content) => {
    const n = doc.createElement(tag);
    n.className = className;
    n.textContent = content;
    return n;
  };
  const box = doc.createElement('div');
  box.className = 'tn-map-popup';
  box.appendChild(node('strong', 'tn-map-popup-title', model.title));
  for (const line of model.lines) box.appendChild(node('p', 'tn-map-popup-line', line));
  if (model.due) box.appendChild(node('p', `tn-map-popup-line due-${model.due.state}`, model.due.text));
  if (model.href) {
    const a = node('a', 'tn-map-popup-link', model.linkText);
    a.setAttribute('href', model.href);
    a.setAttribute('data-link', '');
    box.appendChild(a);
  }
  return box;
}
