// Indicators (the plan's measures) with bar charts drawn as plain HTML, light enough for an old phone.
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox } from '../dom.js';
import { loadCatalog, departmentName } from '../incidents-common.js';

function percent(v) {
  return v === null || v === undefined ? '—' : `${Math.round(v * 1000) / 10}%`;
}

function bars(titleKey, entries, valueOf, format) {
  const max = Math.max(1e-9, ...entries.map(([, v]) => valueOf(v) || 0));
  const chart = el('div', { class: 'bars' });
  for (const [label, v] of entries) {
    const value = valueOf(v) || 0;
    const bar = el('div', { class: 'bar-fill' });
    bar.style.width = `${(value / max) * 100}%`;
    chart.append(el('div', { class: 'bar-row' }, el('span', { class: 'bar-label' }, label), el('div', { class: 'bar' }, bar), el('span', { class: 'bar-value' }, format(valueOf(v)))));
  }
  return el('section', { class: 'card' }, el('h2', {}, t(titleKey)), entries.length ? chart : el('p', { class: 'muted' }, t('incident.none')));
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
      await loadCatalog();
      const from = Date.now() - Number(days.value) * 86400000;
      const data = await getJson(`/api/v1/indicators?from=${from}`);
      const total = data.total;
      const tiles = [
        ['indicators.reported', total.reported], ['indicators.accepted', total.accepted], ['indicators.closed', total.closed],
        ['indicators.on_time', percent(total.on_time_rate)], ['indicators.cross', percent(total.cross_department_completion_rate)],
        ['indicators.accept_time', total.mean_minutes_to_accept === null ? '—' : `${total.mean_minutes_to_accept} ${t('unit.minutes')}`],
        ['indicators.close_time', total.mean_minutes_to_close === null ? '—' : `${Math.round(total.mean_minutes_to_close / 60 * 10) / 10} ${t('unit.hours')}`],
        ['indicators.satisfaction', total.satisfaction === null ? '—' : `${total.satisfaction} / 5`],
        ['indicators.overdue', total.overdue_open],
      ];
      body.append(el('section', { class: 'tiles' }, ...tiles.map(([k, v]) => el('div', { class: 'tile card' }, el('span', { class: 'muted small' }, t(k)), el('strong', {}, String(v))))));
      const areas = Object.entries(data.per_area);
      const depts = Object.entries(data.per_department).map(([d, v]) => [departmentName(d), v]);
      body.append(
        bars('indicators.by_area', areas, (v) => v.reported, (v) => String(v ?? 0)),
        bars('indicators.on_time_by_department', depts, (v) => v.on_time_rate, percent),
        bars('indicators.closed_by_department', depts, (v) => v.closed, (v) => String(v ?? 0)));
    } catch (e) {
      body.append(errorBox(e.message, load));
    }
  };
  days.addEventListener('change', load);
  await load();
}
