// The incident list with filters and search, and the "my tasks" view built on the same list.
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, field, foldable } from '../dom.js';
import { currentUser, can } from '../session.js';
import { loadCatalog, incidentItem } from '../incidents-common.js';
import { offlineAge } from '../format.js';

const STATES = ['reported', 'accepted', 'escalated', 'dispatched', 'in_progress', 'resolved', 'closed', 'rejected'];

function listView(main, titleKey, baseQuery, { filters = true } = {}) {
  clear(main);
  const header = el('div', { class: 'page-head' }, el('h1', { 'data-i18n': titleKey }, t(titleKey)));
  if (can('POST', '/api/v1/incidents')) {
    header.append(el('a', { href: '/incidents/new', 'data-link': true, class: 'button', id: 'new-incident', 'data-i18n': 'incident.report' }, t('incident.report')));
  }
  main.append(header);
  const form = el('form', { class: 'card form filters', id: 'incident-filters', hidden: !filters });
  const q = el('input', { id: 'f-q', name: 'q', type: 'search', placeholder: t('incident.search_hint') });
  const state = el('select', { id: 'f-state', name: 'state' }, el('option', { value: '' }, t('incident.any_state')),
    ...STATES.map((s) => el('option', { value: s }, t(`state.${s}`))));
  const category = el('select', { id: 'f-category', name: 'category' }, el('option', { value: '' }, t('incident.any_category')));
  const overdue = el('select', { id: 'f-due', name: 'due_state' }, el('option', { value: '' }, t('incident.any_due')),
    el('option', { value: 'near' }, t('due.near')), el('option', { value: 'overdue' }, t('due.overdue')));
  form.append(
    field(el('label', { for: 'f-q', 'data-i18n': 'incident.search' }, t('incident.search')), q),
    field(el('label', { for: 'f-state', 'data-i18n': 'incident.state' }, t('incident.state')), state),
    field(el('label', { for: 'f-category', 'data-i18n': 'incident.category' }, t('incident.category')), category),
    field(el('label', { for: 'f-due', 'data-i18n': 'incident.due' }, t('incident.due')), overdue),
    el('button', { type: 'submit', 'data-i18n': 'audit.search' }, t('audit.search')));
  const summary = el('p', { class: 'muted', id: 'incident-total' });
  // Shown when the list is the phone's copy (no network): how old it is.
  const offline = el('p', { class: 'offline-note', id: 'offline-note', hidden: true });
  const list = el('ul', { class: 'incident-list', id: 'incident-list' });
  const more = el('button', { type: 'button', class: 'secondary', hidden: true, 'data-i18n': 'audit.more' }, t('audit.more'));
  const exports = el('p', { class: 'muted small exports', id: 'incident-exports' });
  main.append(foldable(form, { id: 'incident-filters-box', hidden: !filters }), offline, summary, list, more, exports);
  loadCatalog().then((c) => category.append(...c.categories.map((x) => el('option', { value: x.name }, x.name)))).catch(() => {});

  let cursor = null;
  const params = () => {
    const p = new URLSearchParams(baseQuery);
    if (q.value.trim()) p.set('q', q.value.trim());
    if (state.value) p.set('state', state.value);
    if (category.value) p.set('category', category.value);
    if (overdue.value) p.set('due_state', overdue.value);
    return p;
  };
  const load = async (reset) => {
    const p = params();
    p.set('limit', '30');
    if (!reset && cursor) p.set('cursor', cursor);
    if (reset) clear(list);
    try {
      const data = await getJson(`/api/v1/incidents?${p}`);
      offline.hidden = !data.offlineAt;
      offline.textContent = data.offlineAt ? offlineAge(data.offlineAt) : '';
      list.append(...data.incidents.map(incidentItem));
      cursor = data.next_cursor;
      more.hidden = !cursor;
      summary.textContent = `${t('incident.total')} ${data.total}${data.total_capped ? '+' : ''}`;
      const ep = params();
      exports.replaceChildren(t('incident.export'), ' ',
        el('a', { href: `/api/v1/incidents/export.csv?${ep}`, download: 'incidents.csv' }, 'CSV'), ' · ',
        el('a', { href: `/api/v1/incidents/export.geojson?${ep}`, download: 'incidents.geojson' }, 'GeoJSON'));
      if (data.total === 0) list.append(el('li', { class: 'muted' }, t('incident.none')));
    } catch (e) {
      list.append(errorBox(e.message, () => load(reset)));
    }
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); load(true); });
  more.addEventListener('click', () => load(false));
  return load(true);
}

export function renderList(main) {
  return listView(main, 'page.incidents', '');
}

// What needs this person now, by role.
export function renderTasks(main) {
  const me = currentUser();
  const query = {
    grid_worker: `reporter=${encodeURIComponent(me.username)}`,
    dept_handler: 'state=dispatched,in_progress',
    township_staff: 'state=reported,accepted,resolved',
    county_it: 'state=escalated',
    admin: 'state=reported,accepted,escalated,resolved',
  }[me.role] || '';
  return listView(main, 'page.tasks', query, { filters: false });
}
