// Indicators (the plan's measures) with bar charts drawn as plain HTML, light enough for an old phone.
// Areas and departments are shown by name (the node keys its answer by code and id); reports closed
// as duplicates are counted apart, as the node no longer counts them as reported.
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox } from '../dom.js';
import { loadCatalog, departmentName } from '../incidents-common.js';
import { loadAreas, areaNode } from '../names.js';

function percent(v) {
  return v === null || v === undefined ? '—' : `${Math.round(v * 1000) / 10}%`;
}

function count(v) {
  return String(v ?? 0);
}

// `entries`: [labelNode, measures]; the label is a node so an area can carry its code as a tooltip.
function bars(titleKey, entries, valueOf, format, id) {
  const max = Math.max(1e-9, ...entries.map(([, v]) => valueOf(v) || 0));
  const chart = el('div', { class: 'bars' });
  for (const [label, v] of entries) {
    const value = valueOf(v) || 0;
    const bar = el('div', { class: 'bar-fill' });
    bar.style.width = `${(value / max) * 100}%`;
    chart.append(el('div', { class: 'bar-row' }, el('span', { class: 'bar-label' }, label), el('div', { class: 'bar' }, bar), el('span', { class: 'bar-value' }, format(valueOf(v)))));
  }
  return el('section', { class: 'card', id }, el('h2', {}, t(titleKey)), entries.length ? chart : el('p', { class: 'muted' }, t('incident.none')));
}

// The main measures side by side, one row per area or department.
function table(titleKey, firstKey, entries, id) {
  const columns = [
    ['indicators.reported', (v) => count(v.reported)],
    ['indicators.duplicates', (v) => count(v.duplicates)],
    ['indicators.closed', (v) => count(v.closed)],
    ['indicators.on_time', (v) => percent(v.on_time_rate)],
    ['indicators.overdue', (v) => count(v.overdue_open)],
  ];
  if (!entries.length) return el('section', { class: 'card', id }, el('h2', {}, t(titleKey)), el('p', { class: 'muted' }, t('incident.none')));
  // On a phone the table scrolls sideways; as a named, focusable region it can be scrolled from the
  // keyboard too.
  return el('section', { class: 'card', id }, el('h2', {}, t(titleKey)),
    el('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': t(titleKey) }, el('table', { class: 'table' },
      el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, t(firstKey)), ...columns.map(([k]) => el('th', { scope: 'col' }, t(k))))),
      el('tbody', {}, ...entries.map(([label, v, key]) => el('tr', { 'data-key': key }, el('th', { scope: 'row' }, label),
        ...columns.map(([, f]) => el('td', {}, f(v)))))))));
}

export async function render(main) {
  clear(main);
  main.append(el('h1', { 'data-i18n': 'page.indicators' }, t('page.indicators')));
  const days = el('select', { id: 'ind-days' }, ...[7, 30, 90, 365].map((d) => el('option', { value: d, selected: d === 30 }, `${d} ${t('unit.days')}`)));
  const body = el('div', { id: 'indicators' });
  main.append(el('form', { class: 'card form filters' }, el('label', { for: 'ind-days' }, t('indicators.period')), days), body);
  const load = async () => {
    clear(body);
    try {
      const from = Date.now() - Number(days.value) * 86400000;
      const [, dir, data] = await Promise.all([loadCatalog(), loadAreas(), getJson(`/api/v1/indicators?from=${from}`)]);
      const total = data.total;
      const tiles = [
        ['indicators.reported', total.reported], ['indicators.accepted', total.accepted], ['indicators.closed', total.closed],
        ['indicators.duplicates', total.duplicates ?? 0],
        ['indicators.on_time', percent(total.on_time_rate)], ['indicators.cross', percent(total.cross_department_completion_rate)],
        ['indicators.accept_time', total.mean_minutes_to_accept === null ? '—' : `${total.mean_minutes_to_accept} ${t('unit.minutes')}`],
        ['indicators.close_time', total.mean_minutes_to_close === null ? '—' : `${Math.round(total.mean_minutes_to_close / 60 * 10) / 10} ${t('unit.hours')}`],
        ['indicators.satisfaction', total.satisfaction === null ? '—' : `${total.satisfaction} / 5`],
        ['indicators.overdue', total.overdue_open],
      ];
      body.append(el('section', { class: 'tiles' }, ...tiles.map(([k, v]) => el('div', { class: 'tile card', 'data-measure': k }, el('span', { class: 'muted small' }, t(k)), el('strong', {}, String(v))))));
      const areas = Object.entries(data.per_area).map(([code, v]) => [areaNode(dir, code), v, code]);
      const depts = Object.entries(data.per_department).map(([d, v]) => [departmentName(d), v, d]);
      // The same rows again for the table: a node can be in one place only.
      const areaRows = Object.entries(data.per_area).map(([code, v]) => [areaNode(dir, code, null, { code: true }), v, code]);
      body.append(
        bars('indicators.by_area', areas, (v) => v.reported, count, 'ind-by-area'),
        table('indicators.table_by_area', 'indicators.area', areaRows, 'ind-area-table'),
        bars('indicators.on_time_by_department', depts, (v) => v.on_time_rate, percent, 'ind-on-time'),
        bars('indicators.closed_by_department', depts, (v) => v.closed, count, 'ind-closed'),
        table('indicators.table_by_department', 'indicators.department', depts.map(([name, v, d]) => [name, v, d]), 'ind-department-table'));
    } catch (e) {
      body.append(errorBox(e.message, load));
    }
  };
  days.addEventListener('change', load);
  await load();
}
