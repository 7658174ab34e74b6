// The county overview's (数字驾驶舱, ui/js/pages/cockpit.js) rules that need no browser, shared with
// the nodes page for the nodes further down: the link state of every node in the tree (direct
// children from GET /api/v1/nodes `nodes`, the rest from its `below`), worst first; incidents per
// township from GET /api/v1/indicators; stations in trouble from GET /api/v1/sensors; active warnings
// from GET /api/v1/warnings; and what a failed section says. No imports, so the unit tests (tests/ui/)
// load it as it is; texts are i18n keys, put on screen by the pages.

// How often the overview reads everything again while it is shown.
export const REFRESH_MS = 30e3;
// The incidents section covers this many days back from now.
export const INCIDENT_DAYS = 30;
const DAY_MS = 86400e3;
// At most this many rows of a list before a "show all"; the worst come first, so these are the ones.
export const ROW_LIMIT = 12;

// ---- Nodes ----

// The link states a node states itself (GET /api/v1/nodes `state`, for a direct child as this node
// sees its link, for a node below as its parent reported it).
export const LINK_STATES = ['connected', 'offline', 'refused'];

// A report from below older than this is out of date: an unchanged one is sent again every 10
// minutes with its time rounded down to 10, so a current one is under 20 minutes old; the rest is
// room for the trip up. Older means the reporting node has stopped getting through to here (its
// link, or the link of the child it comes through), whatever the report itself says.
export const REPORT_OUTDATED_MS = 25 * 60e3;

// One of 'connected', 'offline', 'refused' (the other side refused the link: enrolment, key, version
// …; `last_error` says why), 'revoked', or, for a node too old to say its `state`, 'error' (not
// connected, with a reason the link last failed: the best guess at a refusal there is).
export function linkState(node) {
  if (!node) return 'offline';
  if (node.revoked) return 'revoked';
  if (LINK_STATES.includes(node.state)) return node.state;
  if (node.connected) return 'connected';
  return typeof node.last_error === 'string' && node.last_error.trim() ? 'error' : 'offline';
}

// The badge a link state is shown as: its words (an i18n key) and its tone ('ok', 'bad' or '').
// A refusal carries its reason as the badge's title, since that is what someone will want to fix.
export function linkBadgeSpec(node) {
  const state = linkState(node);
  const spec = {
    revoked: { key: 'nodes.revoked', tone: 'bad' },
    connected: { key: 'nodes.connected', tone: 'ok' },
    refused: { key: 'nodes.refused', tone: 'bad' },
    error: { key: 'nodes.link_error', tone: 'bad' },
    offline: { key: 'nodes.offline', tone: '' },
  }[state];
  const reason = (state === 'refused' || state === 'error') && typeof node.last_error === 'string' && node.last_error.trim()
    ? node.last_error.trim() : null;
  return { state, ...spec, reason };
}

export function chainBroken(node) {
  return Boolean(node && node.chain && node.chain.intact === false);
}

// How old a report from below is, by the time its parent made it (`as_of_ms`), against `now` (this
// node's clock): `{ at, age_ms, outdated }`, or null when the report does not say (an older parent),
// in which case nothing can be told of its age beyond when it arrived.
export function reportAge(node, now) {
  if (!node || typeof node.as_of_ms !== 'number' || !Number.isFinite(node.as_of_ms)) return null;
  const age = Math.max(0, now - node.as_of_ms);
  return { at: node.as_of_ms, age_ms: age, outdated: age > REPORT_OUTDATED_MS };
}

// The time a report from below speaks for: when its parent made it, else when it arrived here.
function reportTime(node) {
  return typeof node.as_of_ms === 'number' ? node.as_of_ms : node.reported_ms || 0;
}

// Every node of the tree once: the direct children as this node sees them, then the nodes below as
// their parents last reported them. A node below carries `via` (the child it came through), `stale`
// when that child is not connected now (its report is then the last word, not today's), `report`
// (its age, see reportAge) and `outdated` when that report is too old to be current. A node reported
// by two parents (moved from one township to another) counts once, by the newest report; one enrolled
// here directly is known first-hand and its reports from below are dropped. `now` is this node's
// clock, passed in so a test can say when it is.
export function treeNodes(data, now = Date.now()) {
  const nodes = data && Array.isArray(data.nodes) ? data.nodes : [];
  const below = data && Array.isArray(data.below) ? data.below : [];
  const children = new Map(nodes.map((n) => [n.node_id, n]));
  const newest = new Map();
  for (const b of below) {
    if (!b || typeof b.node_id !== 'string' || children.has(b.node_id)) continue;
    const seen = newest.get(b.node_id);
    if (!seen || reportTime(b) > reportTime(seen)
      || (reportTime(b) === reportTime(seen) && (b.reported_ms || 0) > (seen.reported_ms || 0))) newest.set(b.node_id, b);
  }
  const out = nodes.map((n) => ({ ...n, level: 'child', via: null, stale: false, report: null, outdated: false }));
  for (const b of newest.values()) {
    const via = children.get(b.via);
    const report = reportAge(b, now);
    out.push({ ...b, level: 'below', stale: linkState(via) !== 'connected', report, outdated: Boolean(report && report.outdated) });
  }
  return out;
}

// The name of the direct child a node below came through: as this node lists that child, else as the
// report names it (`via_name`), else null (the page then shows the id cut short).
export function viaName(row, children) {
  const child = children && row ? children.get(row.via) : null;
  if (child && child.name) return child.name;
  return row && typeof row.via_name === 'string' && row.via_name.trim() ? row.via_name.trim() : null;
}

// Who made a report from below, when that is not the child it came through (a village reporting the
// nodes under it, relayed by its township): `{ id, name }`, the name as the answer gives it or as the
// tree knows that node, else null. Null when the child itself reported it, which its group already says.
export function reporter(row, tree) {
  if (!row || typeof row.reported_by !== 'string' || !row.reported_by || row.reported_by === row.via) return null;
  const known = (Array.isArray(tree) ? tree : []).find((n) => n.node_id === row.reported_by);
  const name = (typeof row.reported_by_name === 'string' && row.reported_by_name.trim()) || (known && known.name) || null;
  return { id: row.reported_by, name };
}

const RANK = { error: 1, refused: 1, offline: 2, connected: 3, revoked: 4 };
// 0 is worst: a tampered audit chain (revoked or not, as the nodes page's alarm counts it), then a
// refused or failing link, an offline one, a healthy one, and last a revoked node (a decision someone
// took, not a fault).
export function severity(node) {
  if (chainBroken(node)) return 0;
  return RANK[linkState(node)];
}

function byName(a, b) {
  const x = String(a.name ?? a.node_id ?? '');
  const y = String(b.name ?? b.node_id ?? '');
  return x < y ? -1 : x > y ? 1 : 0;
}

// Worst first; among nodes that are down, the one silent longest (or never seen) first; else by name.
export function worstFirst(list) {
  const seen = (n) => (typeof n.last_seen_ms === 'number' ? n.last_seen_ms : -Infinity);
  return [...(Array.isArray(list) ? list : [])].sort((a, b) => severity(a) - severity(b)
    || (severity(a) <= RANK.offline ? seen(a) - seen(b) : 0)
    || byName(a, b));
}

// The counts at the head of the section. A revoked node is counted apart, not as disconnected; a
// broken chain is counted whatever the link does; `stale` counts reports that came through a child
// not connected now, `outdated` reports too old to be current (the two overlap).
export function linkCounts(list) {
  const counts = { total: 0, connected: 0, offline: 0, refused: 0, error: 0, revoked: 0, chain_broken: 0, stale: 0, outdated: 0 };
  for (const n of Array.isArray(list) ? list : []) {
    counts.total += 1;
    counts[linkState(n)] += 1;
    if (chainBroken(n)) counts.chain_broken += 1;
    if (n.stale) counts.stale += 1;
    if (n.outdated) counts.outdated += 1;
  }
  return counts;
}

// The nodes page's section of nodes further down: one group per direct child they came through, in
// the order the children are listed, each worst first. `child` is that direct child (null when it is
// no longer listed here), `name` its name (from the list, else from the reports, else null), `stale`
// whether its reports may be out of date because it is not connected, `outdated` how many of its
// rows are reports too old to be current.
export function belowGroups(data, now = Date.now()) {
  const nodes = data && Array.isArray(data.nodes) ? data.nodes : [];
  const children = new Map(nodes.map((n) => [n.node_id, n]));
  const rows = treeNodes(data, now).filter((n) => n.level === 'below');
  const order = nodes.map((n) => n.node_id);
  const vias = [...new Set(rows.map((n) => n.via))]
    .sort((a, b) => {
      const ia = order.indexOf(a);
      const ib = order.indexOf(b);
      if (ia !== ib) return (ia < 0 ? Infinity : ia) - (ib < 0 ? Infinity : ib);
      return String(a) < String(b) ? -1 : 1;
    });
  return vias.map((via) => {
    const child = children.get(via) || null;
    const members = rows.filter((n) => n.via === via);
    const name = members.map((n) => viaName(n, children)).find(Boolean) || null;
    return {
      via, child, name, stale: members.some((n) => n.stale), outdated: members.filter((n) => n.outdated).length, rows: worstFirst(members),
    };
  });
}

// ---- Incidents ----

export function periodFrom(nowMs, days = INCIDENT_DAYS) {
  return Math.floor(nowMs - days * DAY_MS);
}

function measures(v) {
  const n = (x) => (Number.isFinite(x) ? x : 0);
  return {
    reported: n(v && v.reported),
    closed: n(v && v.closed),
    overdue: n(v && v.overdue_open),
    on_time_rate: v && Number.isFinite(v.on_time_rate) ? v.on_time_rate : null,
  };
}

// The indicators answer as rows, one per area one level down (townships of a county), most overdue
// first, then most reported, then in the register's order. Incidents filed at the node's own area
// (not inside a township) come back under its own code and are marked `own`.
export function incidentRows(data) {
  const per = data && data.per_area && typeof data.per_area === 'object' ? data.per_area : {};
  const own = data && typeof data.area === 'string' ? data.area : null;
  return Object.entries(per)
    .map(([area, v]) => ({ area, own: area === own, ...measures(v) }))
    .sort((a, b) => b.overdue - a.overdue || b.reported - a.reported || (a.area < b.area ? -1 : a.area > b.area ? 1 : 0));
}

export function incidentTotals(data) {
  return measures(data && data.total);
}

// Overdue is a state now, not something that happened in the period: an incident reported 40 days
// ago and still open past its deadline must count. `allTime` is the indicators answer from the
// beginning; its open overdue counts replace the period's, per area and in total, and an area with
// only old overdue incidents gets a row of its own.
export function withOverdueNow(rows, totals, allTime) {
  const per = allTime && allTime.per_area && typeof allTime.per_area === 'object' ? allTime.per_area : {};
  const own = allTime && typeof allTime.area === 'string' ? allTime.area : null;
  const overdueOf = (area) => measures(per[area]).overdue;
  const merged = rows.map((r) => ({ ...r, overdue: overdueOf(r.area) }));
  for (const area of Object.keys(per)) {
    if (overdueOf(area) > 0 && !merged.some((r) => r.area === area)) {
      merged.push({ area, own: area === own, reported: 0, closed: 0, overdue: overdueOf(area), on_time_rate: null });
    }
  }
  merged.sort((a, b) => b.overdue - a.overdue || b.reported - a.reported || (a.area < b.area ? -1 : a.area > b.area ? 1 : 0));
  return { rows: merged, totals: { ...totals, overdue: measures(allTime && allTime.total).overdue } };
}

// A rate as the page writes it: 0.875 → "87.5%"; no rate (nothing with a deadline yet) → "—".
export function percent(rate) {
  return Number.isFinite(rate) ? `${Math.round(rate * 1000) / 10}%` : '—';
}

// ---- Stations ----

const STATION_STATUSES = ['online', 'stale', 'faulty', 'unknown'];
const STATION_RANK = { faulty: 0, stale: 1, unknown: 2 };

export function stationCounts(devices) {
  const counts = { total: 0, online: 0, stale: 0, faulty: 0, unknown: 0 };
  for (const d of Array.isArray(devices) ? devices : []) {
    counts.total += 1;
    counts[d && STATION_STATUSES.includes(d.status) ? d.status : 'unknown'] += 1;
  }
  return counts;
}

// The stations not reporting on schedule: faulty first, then stale, then never heard of; within
// each the one silent longest first.
export function troubledStations(devices) {
  const seen = (d) => (typeof d.last_seen === 'number' ? d.last_seen : -Infinity);
  return (Array.isArray(devices) ? devices : [])
    .filter((d) => d && d.status !== 'online')
    .map((d) => ({ ...d, status: ['faulty', 'stale'].includes(d.status) ? d.status : 'unknown' }))
    .sort((a, b) => STATION_RANK[a.status] - STATION_RANK[b.status] || seen(a) - seen(b)
      || String(a.name ?? '').localeCompare(String(b.name ?? '')));
}

// ---- Warnings ----

export const LEVELS = ['blue', 'yellow', 'orange', 'red'];
// Raised (waiting for someone to issue it) and issued warnings are the ones that stand.
export const OPEN_STATES = ['raised', 'issued'];

// Since when a warning stands: issued, else its onset, else its last change (a raised warning has no
// time of its own in the list).
export function warningSince(w) {
  if (!w) return null;
  for (const t of [w.issued_ms, w.onset_ms, w.updated_ms]) if (Number.isFinite(t)) return t;
  return null;
}

// The standing warnings, red first down to blue (a warning without a level last), newest first in a
// level.
export function activeWarnings(list) {
  const rank = (w) => LEVELS.indexOf(w.level);
  return (Array.isArray(list) ? list : [])
    .filter((w) => w && OPEN_STATES.includes(w.state))
    .sort((a, b) => rank(b) - rank(a) || (warningSince(b) ?? 0) - (warningSince(a) ?? 0));
}

export function levelCounts(list) {
  const counts = { blue: 0, yellow: 0, orange: 0, red: 0 };
  for (const w of Array.isArray(list) ? list : []) if (w && w.level in counts) counts[w.level] += 1;
  return counts;
}

// ---- Failures ----

// What a section that could not load says: 'forbidden' (the node refused this person: a short note,
// no retry, since trying again will not change it) or 'failed' (the network, a timeout, the node:
// the error's message and a retry).
export function failureKind(error) {
  return error && error.status === 403 ? 'forbidden' : 'failed';
}
