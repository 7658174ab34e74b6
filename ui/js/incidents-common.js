// Shared pieces of the incident pages: labels for states and departments, badges, the catalog, one row
// of a list, and the maps' texts.
import { getJson } from './api.js';
import { t } from './i18n.js';
import { el } from './dom.js';
import { formatTime, overdueText } from './format.js';
import { areaNode, personNode } from './names.js';
import { departmentText } from './incidents-logic.js';

let catalog = null;
export async function loadCatalog() {
  if (!catalog) catalog = await getJson('/api/v1/catalog');
  return catalog;
}

// `name`: the one the node sent with the record, preferred over the catalog's (the catalog may not
// be loaded yet, or be another node's).
export function departmentName(id, name) {
  return departmentText(id, name, catalog?.departments);
}

export function stateBadge(state) {
  return el('span', { class: `badge state-${state}`, 'data-state': state }, t(`state.${state}`));
}

export function dueBadge(dueState) {
  if (!dueState || dueState === 'ok') return null;
  return el('span', { class: `badge due-${dueState}` }, t(`due.${dueState}`));
}

// Past due: how late ("超期 3 小时") rather than only that it is; the plain badge when the due time is
// unknown or this phone's clock does not yet see it as past.
export function lateBadge(dueState, dueMs) {
  if (dueState === 'overdue') {
    const late = overdueText(dueMs);
    if (late) return el('span', { class: 'badge due-overdue late', 'data-due': 'overdue' }, late);
  }
  return dueBadge(dueState);
}

// One row of an incident list: the village and the reporter by name, and for an open item who holds
// it and, when overdue, how late it is. `dir` is the area directory (names.js) for rows that come
// without a name.
export function incidentItem(i, dir) {
  const thumb = i.thumbnail
    ? el('img', { class: 'thumb', src: `/api/v1/blobs/${i.thumbnail}/thumbnail`, alt: '', loading: 'lazy', width: 64, height: 64 })
    : el('div', { class: 'thumb empty' }, i.category.slice(0, 2));
  const meta = el('p', { class: 'muted small incident-meta' }, `${i.category} · `, areaNode(dir, i.area, i.area_name), ' · ',
    personNode(i.reporter_name, i.reporter), ` · ${formatTime(i.created_ms)}`);
  const lead = i.lead_department && !['closed', 'rejected', 'duplicate'].includes(i.state)
    ? el('span', { class: 'badge holder', 'data-department': i.lead_department }, t('incident.held_by', { department: departmentName(i.lead_department, i.lead_department_name) }))
    : null;
  const badges = el('p', { class: 'badges' }, stateBadge(i.state), ' ', lateBadge(i.due_state, i.due_ms), lead,
    i.conflicts > 0 ? el('span', { class: 'badge bad' }, t('incident.has_conflicts')) : null);
  return el('li', { class: 'incident-item', 'data-id': i.id, 'data-state': i.state },
    el('a', { href: `/incidents/${i.id}`, 'data-link': true, class: 'incident-link' }, thumb,
      el('div', { class: 'incident-text' }, el('strong', {}, i.title), meta, badges)));
}

const STATES = ['reported', 'accepted', 'rejected', 'escalated', 'dispatched', 'in_progress', 'resolved', 'closed', 'duplicate'];

// The maps' texts (map.js) in the page's language.
export function mapLabels() {
  return {
    pickMap: t('map.pick'),
    incidentsMap: t('map.incidents'),
    pin: t('map.pin'),
    open: t('map.open'),
    noBaseMap: t('map.no_base_map'),
    loadFailed: t('map.load_failed'),
    legend: t('map.legend'),
    noPoints: t('map.no_points'),
    capped: t('map.capped'),
    zoomIn: t('map.zoom_in'),
    zoomOut: t('map.zoom_out'),
    close: t('map.close'),
    states: Object.fromEntries(STATES.map((s) => [s, t(`state.${s}`)])),
    due: { ok: t('due.ok'), near: t('due.near'), overdue: t('due.overdue') },
  };
}
