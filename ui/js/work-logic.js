// The landing page's and the new-work notice's rules that need no browser: which sections each role
// gets and in which order, how late an overdue incident is, which rows come first, and what a change
// of the work summary (GET /api/v1/incidents/work) is worth telling. Texts are returned as keys with
// their numbers, never as sentences, and there are no imports, so the unit tests (tests/ui/) load it
// as it is.

// Open states, as the node's work summary counts them (src/incidents/query.rs `work`).
export const OPEN_STATES = ['reported', 'accepted', 'escalated', 'dispatched', 'in_progress'];
// At most this many rows per section: the landing says what waits; the full list is a link away.
export const SECTION_LIMIT = 10;

// The list queries the node puts in the summary, for when the summary cannot be had (no network, and
// the service worker keeps no copy of it) and the lists may still come from the phone's copies.
export function defaultFilter(kind, user) {
  switch (kind) {
    case 'verify': return `state=resolved&reporter=${encodeURIComponent(user.username)}`;
    case 'new': return 'state=reported';
    case 'overdue': return 'overdue=true';
    case 'escalated': return 'state=escalated';
    case 'queue': return `state=dispatched,in_progress&department=${encodeURIComponent(user.department || '-')}`;
    default: return '';
  }
}

function summaryItem(summary, kind) {
  const items = summary && Array.isArray(summary.items) ? summary.items : [];
  return items.find((i) => i && i.kind === kind) || null;
}

// One section backed by a kind of the summary: its query from the node when known, its count too.
function workSection(id, kind, user, summary, extra = {}) {
  const item = summaryItem(summary, kind);
  const filter = item && typeof item.filter === 'string' ? item.filter : defaultFilter(kind, user);
  return {
    id, kind, source: 'incidents', filter,
    count: item && Number.isFinite(item.count) ? item.count : null,
    href: `/incidents?${filter}`,
    titleKey: `work.section_${id}`, highlight: false, lateness: false, overdueFirst: false,
    ...extra,
  };
}

// The sections of a person's landing page, in the order they are shown. `canNodes`: whether the node
// lets them read the nodes' health (GET /api/v1/nodes).
export function sectionsFor(user, summary, { canNodes = false } = {}) {
  if (!user) return [];
  switch (user.role) {
    case 'grid_worker': {
      // Her checks come first and stand out: nothing else on the page is hers alone to do.
      const mine = `reporter=${encodeURIComponent(user.username)}&state=${OPEN_STATES.join(',')}`;
      return [
        workSection('verify', 'verify', user, summary, { highlight: true }),
        { id: 'mine', kind: null, source: 'incidents', filter: mine, count: null, href: `/incidents?${mine}`,
          titleKey: 'work.section_mine', highlight: false, lateness: false, overdueFirst: false },
      ];
    }
    case 'township_staff':
    case 'admin':
      return [
        workSection('new', 'new', user, summary),
        workSection('overdue', 'overdue', user, summary, { lateness: true }),
        workSection('escalated', 'escalated', user, summary),
        { id: 'warnings', kind: null, source: 'warnings', filter: 'state=issued', count: null, href: '/warnings',
          titleKey: 'work.section_warnings', highlight: false, lateness: false, overdueFirst: false },
      ];
    case 'dept_handler':
      return [workSection('queue', 'queue', user, summary, { lateness: true, overdueFirst: true })];
    case 'county_it': {
      const sections = [];
      if (canNodes) {
        sections.push({ id: 'nodes', kind: null, source: 'nodes', filter: '', count: null, href: '/nodes',
          titleKey: 'work.section_nodes', highlight: false, lateness: false, overdueFirst: false });
      }
      // Here they are what the townships could not settle, not what this office passed up.
      sections.push(workSection('escalated', 'escalated', user, summary, { titleKey: 'work.section_from_townships' }));
      return sections;
    }
    default:
      return [];
  }
}

// How late an incident is, as a text key and its number: whole minutes, hours or days, rounded down
// so "3 hours" never means 2 h 31 min. Null when it is not past its deadline.
export function lateness(dueMs, nowMs) {
  if (typeof dueMs !== 'number' || !Number.isFinite(dueMs) || nowMs <= dueMs) return null;
  const minutes = Math.floor((nowMs - dueMs) / 60000);
  if (minutes < 1) return { key: 'work.late_just', n: 0 };
  if (minutes < 60) return { key: 'work.late_minutes', n: minutes };
  if (minutes < 1440) return { key: 'work.late_hours', n: Math.floor(minutes / 60) };
  return { key: 'work.late_days', n: Math.floor(minutes / 1440) };
}

const DUE_RANK = { overdue: 0, near: 1 };
const dueOf = (row) => (typeof row.due_ms === 'number' ? row.due_ms : Infinity);

// A queue in the order to work it: overdue first, then those near their deadline, then the rest;
// within each, the earliest deadline first.
export function overdueFirst(rows) {
  return [...rows].sort((a, b) => (DUE_RANK[a.due_state] ?? 2) - (DUE_RANK[b.due_state] ?? 2) || dueOf(a) - dueOf(b));
}

// The latest deadline last: the one waiting longest past it heads the overdue list.
export function mostLateFirst(rows) {
  return [...rows].sort((a, b) => dueOf(a) - dueOf(b));
}

// Rows of several lists, each once, in the order given, at most `limit`.
export function mergeRows(lists, limit = SECTION_LIMIT) {
  const seen = new Set();
  const out = [];
  for (const list of lists) {
    for (const row of list || []) {
      if (!row || seen.has(row.id)) continue;
      seen.add(row.id);
      out.push(row);
      if (out.length >= limit) return out;
    }
  }
  return out;
}

// Who holds an incident now, for the overdue list: its lead department, else the level the state
// says (the township until it is dispatched, the county once escalated).
export function holder(row) {
  if (row.lead_department_name || row.lead_department) {
    return { key: 'work.held_by', name: row.lead_department_name || row.lead_department };
  }
  if (row.state === 'escalated') return { key: 'work.held_by_county' };
  return { key: 'work.held_by_township' };
}

// A downstream node needs a look when it is not connected or its last sync failed; a revoked one is
// gone on purpose and needs none.
export function nodeUnhealthy(n) {
  return !n.revoked && (!n.connected || Boolean(n.last_error));
}

// Unhealthy first (the one silent longest at the top), then the healthy by name, revoked last.
export function nodesByHealth(nodes) {
  const rank = (n) => (n.revoked ? 2 : nodeUnhealthy(n) ? 0 : 1);
  const seen = (n) => (typeof n.last_seen_ms === 'number' ? n.last_seen_ms : -Infinity);
  return [...nodes].sort((a, b) => rank(a) - rank(b)
    || (rank(a) === 0 ? seen(a) - seen(b) : String(a.name).localeCompare(String(b.name))));
}

// The number on the header's badge.
export function badgeCount(summary) {
  const n = summary && Number(summary.total);
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0;
}

// What a new summary is worth telling, against the one before: only when the total went up, each
// kind that grew with how much, in the summary's order. The first summary after sign-in tells
// nothing (the page shows it); a total that went up with no kind growing (one incident moving from
// one list to two) is told as new work in general.
export function newWork(prev, next) {
  if (!prev || !next) return [];
  const grew = badgeCount(next) - badgeCount(prev);
  if (grew <= 0) return [];
  const out = [];
  for (const item of next.items || []) {
    const before = summaryItem(prev, item.kind);
    const n = (Number(item.count) || 0) - (before ? Number(before.count) || 0 : 0);
    if (n > 0) out.push({ kind: item.kind, n });
  }
  return out.length ? out : [{ kind: 'any', n: grew }];
}

const TOAST_KINDS = ['verify', 'new', 'overdue', 'escalated', 'queue'];

// The text key for one part of the notice ("新上报 1 件" / "1 new report"): English needs the singular.
export function newWorkKey({ kind, n }) {
  const base = TOAST_KINDS.includes(kind) ? kind : 'any';
  return `work.toast_${base}${n === 1 ? '_one' : ''}`;
}
