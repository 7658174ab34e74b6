// Shared pieces of the incident pages: labels for states and departments, badges, the catalog.
import { getJson } from './api.js';
import { t } from './i18n.js';
import { el } from './dom.js';
import { formatTime } from './format.js';

let catalog = null;
export async function loadCatalog() {
  if (!catalog) catalog = await getJson('/api/v1/catalog');
  return catalog;
}

export function departmentName(id) {
  const d = catalog?.departments.find((x) => x.id === id);
  return d ? d.name : id;
}

export function stateBadge(state) {
  return el('span', { class: `badge state-${state}`, 'data-state': state }, t(`state.${state}`));
}

export function dueBadge(dueState) {
  if (!dueState || dueState === 'ok') return null;
  return el('span', { class: `badge due-${dueState}` }, t(`due.${dueState}`));
}

// One row of an incident list.
export function incidentItem(i) {
  const thumb = i.thumbnail
    ? el('img', { class: 'thumb', src: `/api/v1/blobs/${i.thumbnail}/thumbnail`, alt: '', loading: 'lazy', width: 64, height: 64 })
    : el('div', { class: 'thumb empty' }, i.category.slice(0, 2));
  const meta = el('p', { class: 'muted small' }, `${i.category} · ${i.area} · ${formatTime(i.created_ms)}`);
  const badges = el('p', { class: 'badges' }, stateBadge(i.state), ' ', dueBadge(i.due_state),
    i.conflicts > 0 ? el('span', { class: 'badge bad' }, t('incident.has_conflicts')) : null);
  return el('li', { class: 'incident-item', 'data-id': i.id },
    el('a', { href: `/incidents/${i.id}`, 'data-link': true, class: 'incident-link' }, thumb,
      el('div', { class: 'incident-text' }, el('strong', {}, i.title), meta, badges)));
}
