// The incident list with filters and search, and the "my tasks" view built on the same list. Villages,
// reporters and departments are shown by name; the list can be shown as a map of the same filters
// (map.js, fetched only when the map is first shown and released on leaving the page).
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, field, foldable } from '../dom.js';
import { currentUser, can } from '../session.js';
import { loadCatalog, incidentItem, mapLabels } from '../incidents-common.js';
import { offlineAge } from '../format.js';
import { loadAreas } from '../names.js';
import { areasWithin } from '../incidents-logic.js';
import { startView } from '../view.js';

const STATES = ['reported', 'accepted', 'escalated', 'dispatched', 'in_progress', 'resolved', 'closed', 'rejected', 'duplicate'];

// "列表 / 地图": two toggle buttons; the map is built the first time it is shown and kept (with its
// zoom and position) while the person switches back and forth.
function viewToggle(onShow) {
  const listButton = el('button', { type: 'button', class: 'secondary', id: 'show-list', 'aria-pressed': 'true', 'data-i18n': 'incident.view_list' }, t('incident.view_list'));
  const mapButton = el('button', { type: 'button', class: 'secondary', id: 'show-map', 'aria-pressed': 'false', 'data-i18n': 'incident.view_map' }, t('incident.view_map'));
  const set = (which) => {
    listButton.setAttribute('aria-pressed', String(which === 'list'));
    mapButton.setAttribute('aria-pressed', String(which === 'map'));
    onShow(which);
  };
  listButton.addEventListener('click', () => set('list'));
  mapButton.addEventListener('click', () => set('map'));
  return el('div', { class: 'view-toggle', role: 'group', 'aria-label': t('incident.view_as') }, listButton, mapButton);
}

function listView(main, titleKey, baseQuery, { filters = true, map = false } = {}) {
  clear(main);
  const view = startView();
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
  const area = el('select', { id: 'f-area', name: 'area' }, el('option', { value: '' }, t('incident.any_area')));
  const department = el('select', { id: 'f-department', name: 'department' }, el('option', { value: '' }, t('incident.any_department')));
  const overdue = el('select', { id: 'f-due', name: 'due_state' }, el('option', { value: '' }, t('incident.any_due')),
    el('option', { value: 'near' }, t('due.near')), el('option', { value: 'overdue' }, t('due.overdue')));
  // Hidden until the directory names an area below the person's own (a village worker has none).
  const areaField = field(el('label', { for: 'f-area', 'data-i18n': 'incident.area_filter' }, t('incident.area_filter')), area);
  areaField.hidden = true;
  form.append(
    field(el('label', { for: 'f-q', 'data-i18n': 'incident.search' }, t('incident.search')), q),
    field(el('label', { for: 'f-state', 'data-i18n': 'incident.state' }, t('incident.state')), state),
    field(el('label', { for: 'f-category', 'data-i18n': 'incident.category' }, t('incident.category')), category),
    areaField,
    field(el('label', { for: 'f-department', 'data-i18n': 'incident.lead_department' }, t('incident.lead_department')), department),
    field(el('label', { for: 'f-due', 'data-i18n': 'incident.due' }, t('incident.due')), overdue),
    el('button', { type: 'submit', 'data-i18n': 'audit.search' }, t('audit.search')));
  const summary = el('p', { class: 'muted', id: 'incident-total' });
  // Shown when the list is the phone's copy (no network): how old it is.
  const offline = el('p', { class: 'offline-note', id: 'offline-note', hidden: true });
  const list = el('ul', { class: 'incident-list', id: 'incident-list' });
  const more = el('button', { type: 'button', class: 'secondary', hidden: true, 'data-i18n': 'audit.more' }, t('audit.more'));
  const exports = el('p', { class: 'muted small exports', id: 'incident-exports' });
  const listPart = el('div', { id: 'incident-list-view' }, summary, list, more);
  const mapPart = el('div', { id: 'incident-map-view', hidden: true },
    el('div', { id: 'incident-map', class: 'incident-map' }), el('p', { class: 'muted small', id: 'incident-map-note' }));
  let mapShown = false;
  let mapHandle = null;
  const toggle = map ? viewToggle((which) => {
    mapShown = which === 'map';
    listPart.hidden = mapShown;
    mapPart.hidden = !mapShown;
    if (mapShown) drawMap();
  }) : null;
  main.append(foldable(form, { id: 'incident-filters-box', hidden: !filters }), toggle, offline, listPart, mapPart, exports);
  loadCatalog().then((c) => {
    category.append(...c.categories.map((x) => el('option', { value: x.name }, x.name)));
    department.append(...c.departments.map((d) => el('option', { value: d.id }, d.name)));
  }).catch(() => {});
  // Only the areas below the person's own are worth filtering by; the code is each option's tooltip.
  const me = currentUser();
  let dir = null;
  const areasReady = loadAreas().then((d) => {
    dir = d;
    const below = areasWithin(d.areas, me.area).filter((a) => a.code !== me.area);
    area.append(...below.map((a) => el('option', { value: a.code, title: a.code }, a.name)));
    areaField.hidden = below.length === 0;
  });

  let cursor = null;
  const params = () => {
    const p = new URLSearchParams(baseQuery);
    if (q.value.trim()) p.set('q', q.value.trim());
    if (state.value) p.set('state', state.value);
    if (category.value) p.set('category', category.value);
    if (area.value) p.set('area', area.value);
    if (department.value) p.set('department', department.value);
    if (overdue.value) p.set('due_state', overdue.value);
    return p;
  };

  // The map of what the filters select, as the node exports it (every match, not just this page of
  // the list). map.js is imported here, on first use, so the list alone never fetches Leaflet.
  let mapQuery = null;
  async function drawMap() {
    const p = params().toString();
    if (mapHandle && mapQuery === p) return;
    mapQuery = p;
    const note = document.getElementById('incident-map-note');
    try {
      const [{ mountIncidentsMap }, features] = await Promise.all([
        import('../map.js'),
        getJson(`/api/v1/incidents/export.geojson?${p}`),
      ]);
      if (!view.alive || mapQuery !== p) return;
      const located = features.features.filter((f) => f.geometry).length;
      note.textContent = t('incident.map_count', { n: located, total: features.features.length });
      if (mapHandle) mapHandle.setFeatures(features);
      else {
        mapHandle = mountIncidentsMap(document.getElementById('incident-map'), { features, labels: mapLabels() });
        view.add(() => mapHandle.destroy());
      }
    } catch (e) {
      mapQuery = null;
      note.textContent = e.message || t('map.load_failed');
    }
  }

  const load = async (reset) => {
    const p = params();
    p.set('limit', '30');
    if (!reset && cursor) p.set('cursor', cursor);
    if (reset) clear(list);
    try {
      const [data] = await Promise.all([getJson(`/api/v1/incidents?${p}`), areasReady]);
      if (!view.alive) return;
      offline.hidden = !data.offlineAt;
      offline.textContent = data.offlineAt ? offlineAge(data.offlineAt) : '';
      list.append(...data.incidents.map((i) => incidentItem(i, dir)));
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
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    load(true);
    if (mapShown) drawMap();
  });
  more.addEventListener('click', () => load(false));
  return load(true);
}

// Filters a link may carry (the landing page's "see all" links): the list starts from them, and says so.
const LINK_FILTERS = ['state', 'category', 'area', 'department', 'assignee', 'reporter', 'overdue', 'due_state', 'q'];

export function renderList(main) {
  const given = new URLSearchParams(location.search);
  const base = new URLSearchParams();
  for (const key of LINK_FILTERS) {
    const value = given.get(key);
    if (value) base.set(key, value);
  }
  const done = listView(main, 'page.incidents', base.toString(), { map: true });
  if ([...base.keys()].length) {
    const note = el('p', { class: 'muted small', id: 'link-filter' }, t('incident.link_filter'), ' ',
      el('a', { href: '/incidents', 'data-link': true }, t('incident.link_filter_clear')));
    main.querySelector('.page-head')?.after(note);
  }
  return done;
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
