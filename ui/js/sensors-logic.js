// The sensors pages' rules that need no browser: whose a station is (this node's, or a node's below,
// known by `origin`, and the child of this node it came through, `via`), the list's filters as they stand in the address, and how a county's hundreds of
// stations are grouped (one group per owning node, in area order) and counted. No imports, so the
// unit tests (tests/ui/) load it as it is; the pages in ui/js/pages/sensors-*.js put it on screen.

export const SCOPES = ['all', 'local', 'tree'];
export const STATUSES = ['online', 'stale', 'faulty', 'unknown'];
// The key this node's own stations are grouped and filtered under (an origin is a node id, never this).
export const LOCAL = 'local';

// A station of a node below: the node says where it came from; this node's own have no origin.
export function isTree(device) {
  return Boolean(device && typeof device.origin === 'string' && device.origin);
}

// Ids of stations below are `device@origin`; that alone tells a station page what to ask for before
// it has the station.
export function isTreeId(id) {
  return typeof id === 'string' && id.includes('@');
}

// The direct child a station below came through, when that is not its own node (a village's station
// relayed by its township): `{ id, name }`, `name` as the answer gives it (`via_name`) or null when it
// does not (an older node, or a child no longer enrolled here), and then the page shows the id cut
// short. Null for this node's stations and for those of a direct child, whose own name says it.
export function viaOf(device) {
  if (!isTree(device) || typeof device.via !== 'string' || !device.via || device.via === device.origin) return null;
  const name = typeof device.via_name === 'string' && device.via_name.trim() ? device.via_name.trim() : null;
  return { id: device.via, name };
}

export function nodeKey(device) {
  return isTree(device) ? device.origin : LOCAL;
}

// Anything but a station reporting on schedule needs looking at.
export function isProblem(device) {
  return !device || device.status !== 'online';
}

// The list's filters from the address (?scope=tree&node=…&status=problem), anything unknown as the
// default, so a shared or old link never shows an empty page for a typo.
export function readFilter(params) {
  const get = (name) => (params && typeof params.get === 'function' ? params.get(name) : null) || '';
  const scope = SCOPES.includes(get('scope')) ? get('scope') : 'all';
  // A node the scope cannot show would only empty the list, with the node field hidden.
  let node = get('node');
  if ((scope === 'local' && node !== LOCAL) || (scope === 'tree' && node === LOCAL)) node = '';
  return { scope, node, status: get('status') === 'problem' ? 'problem' : '' };
}

// The filters back as a query string, defaults left out so the plain list keeps the plain address.
export function filterQuery(filter) {
  const q = new URLSearchParams();
  if (filter.scope && filter.scope !== 'all') q.set('scope', filter.scope);
  if (filter.node) q.set('node', filter.node);
  if (filter.status) q.set('status', filter.status);
  const s = q.toString();
  return s ? `?${s}` : '';
}

export function inScope(device, scope) {
  if (scope === 'local') return !isTree(device);
  if (scope === 'tree') return isTree(device);
  return true;
}

export function matches(device, filter) {
  if (!inScope(device, filter.scope)) return false;
  if (filter.node && nodeKey(device) !== filter.node) return false;
  if (filter.status === 'problem' && !isProblem(device)) return false;
  return true;
}

export function statusCounts(devices) {
  const counts = { total: 0, online: 0, stale: 0, faulty: 0, unknown: 0, problems: 0 };
  for (const d of Array.isArray(devices) ? devices : []) {
    const s = STATUSES.includes(d.status) ? d.status : 'unknown';
    counts.total += 1;
    counts[s] += 1;
    if (s !== 'online') counts.problems += 1;
  }
  return counts;
}

const collator = (() => {
  try { return new Intl.Collator('zh-CN'); } catch (_) { return null; }
})();
function byText(a, b) {
  const x = String(a ?? '');
  const y = String(b ?? '');
  return collator ? collator.compare(x, y) : x < y ? -1 : x > y ? 1 : 0;
}
function byCode(a, b) {
  const x = String(a ?? '');
  const y = String(b ?? '');
  return x < y ? -1 : x > y ? 1 : 0;
}

// The nodes stations belong to, for the node filter and the group headings: this node first, then
// the others in area order (a township's villages follow it), by name where areas tie.
// `{ key, origin, name, local, area, count, via }`; `name` may be null (a node that did not say), `via`
// is as viaOf says for its stations (the first that names it).
export function nodesOf(devices) {
  const nodes = new Map();
  for (const d of Array.isArray(devices) ? devices : []) {
    const key = nodeKey(d);
    let n = nodes.get(key);
    if (!n) {
      n = { key, origin: isTree(d) ? d.origin : null, name: null, local: !isTree(d), area: null, count: 0, via: null };
      nodes.set(key, n);
    }
    n.count += 1;
    if (!n.name && typeof d.node_name === 'string' && d.node_name.trim()) n.name = d.node_name.trim();
    const via = viaOf(d);
    if (via && (!n.via || (!n.via.name && via.name))) n.via = via;
    if (typeof d.area === 'string' && (n.area === null || d.area < n.area)) n.area = d.area;
  }
  return [...nodes.values()].sort((a, b) => (a.local !== b.local ? (a.local ? -1 : 1) : 0)
    || byCode(a.area, b.area) || byText(a.name, b.name) || byCode(a.key, b.key));
}

// Stations inside a group: by area (code, so villages keep the register's order), then by name.
export function stationOrder(a, b) {
  return byCode(a.area, b.area) || byText(a.name, b.name) || byCode(a.id, b.id);
}

// The stations the filters let through, one group per owning node, each with its counts:
// `{ key, origin, name, local, via, stations, counts }`. The groups keep the order of `nodesOf` over the
// whole list, so a filter never reorders them; groups left empty by the filters are left out.
export function groupStations(devices, filter) {
  const all = Array.isArray(devices) ? devices : [];
  const shown = all.filter((d) => matches(d, filter));
  return nodesOf(all).map((n) => {
    const stations = shown.filter((d) => nodeKey(d) === n.key).sort(stationOrder);
    return { key: n.key, origin: n.origin, name: n.name, local: n.local, via: n.via, stations, counts: statusCounts(stations) };
  }).filter((g) => g.stations.length > 0);
}

// Whether a group starts open: every group while the list is short, else only this node's own and a
// node picked in the filter, so a county's list opens as a page of headings with their counts.
export const OPEN_ALL_UP_TO = 40;
export function groupOpen(group, shownTotal, filter) {
  return shownTotal <= OPEN_ALL_UP_TO || group.local || Boolean(filter && filter.node);
}

// The metrics a station shows, in order: a card built for one list can take new values in place only
// while the list is the same.
export function sameMetrics(a, b) {
  const ma = (a && Array.isArray(a.points) ? a.points : []).map((p) => p.metric);
  const mb = (b && Array.isArray(b.points) ? b.points : []).map((p) => p.metric);
  return ma.length === mb.length && ma.every((m, i) => m === mb[i]);
}

// A list where this node's stations stay as the live stream left them and the stations below are
// replaced by a fresh read of them (`GET /api/v1/sensors?scope=tree`).
export function mergeTree(devices, tree) {
  const local = (Array.isArray(devices) ? devices : []).filter((d) => !isTree(d));
  return [...local, ...(Array.isArray(tree) ? tree : []).filter(isTree)];
}
