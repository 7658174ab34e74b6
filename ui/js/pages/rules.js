// The rules page: the rules covering this person's area with their live state, and for those who may
// write rules an editor that tries a rule on the last 24 hours of stored readings before saving it.
import { getJson, postJson, putJson, del, ApiError } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, markRequired } from '../dom.js';
import { currentUser, can } from '../session.js';
import { formatTime } from '../format.js';
import { loadAreas, areaLabel } from '../names.js';

const LEVELS = ['blue', 'yellow', 'orange', 'red'];
const KINDS = ['threshold', 'rolling_sum', 'rate', 'stale'];
const EVENTS = ['flood', 'rainstorm', 'landslide', 'air_pollution', 'water_pollution', 'other'];

function stateText(state) {
  if (!state || state === 'none') return t('rules.state_none');
  if (state === 'stale') return t('rules.state_stale');
  return t(`level.${state}`);
}

function field(id, label, input) {
  input.id = id;
  return [el('label', { for: id }, label), input];
}

function editor(main, rule, devices) {
  const me = currentUser();
  const body = rule || { area: me ? me.area : '', kind: 'threshold', op: '>=', levels: {}, event: 'flood', auto_issue: [] };
  const form = el('form', { class: 'card form', id: 'rule-form' });
  const name = el('input', { required: true, maxlength: 100, value: body.name || '' });
  const area = el('input', { required: true, value: body.area || '', inputmode: 'numeric' });
  const device = el('select', {}, el('option', { value: '' }, t('rules.any_device')),
    ...devices.map((d) => el('option', { value: d.id, selected: d.id === body.device }, `${d.name} (${d.id})`)));
  const metric = el('input', { required: true, value: body.metric || '', list: 'rule-metrics' });
  const metrics = el('datalist', { id: 'rule-metrics' },
    ...[...new Set(devices.flatMap((d) => (d.points || []).map((p) => p.metric)))].map((m) => el('option', { value: m })));
  const kind = el('select', {}, ...KINDS.map((k) => el('option', { value: k, selected: k === body.kind }, t(`rules.kind_${k}`))));
  const op = el('select', {}, ...['>=', '<='].map((o) => el('option', { value: o, selected: o === (body.op || '>=') }, o)));
  const levels = Object.fromEntries(LEVELS.map((l) => [l, el('input', { type: 'number', step: 'any', value: body.levels && body.levels[l] !== undefined ? body.levels[l] : '' })]));
  const forDur = el('input', { value: body.for || '', placeholder: '5m' });
  const hysteresis = el('input', { type: 'number', step: 'any', min: 0, value: body.hysteresis ?? '' });
  const clearAfter = el('input', { value: body.clear_after || '', placeholder: '10m' });
  const windowDur = el('input', { value: body.window || '', placeholder: '1h' });
  const after = el('input', { value: body.after || '', placeholder: '30m' });
  const event = el('select', {}, ...EVENTS.map((e) => el('option', { value: e, selected: e === body.event }, t(`event.${e}`))));
  const auto = Object.fromEntries(LEVELS.map((l) => [l, el('input', { type: 'checkbox', checked: (body.auto_issue || []).includes(l) })]));
  const message = el('p', { class: 'error', role: 'alert' });
  const preview = el('ul', { class: 'muted small', id: 'rule-preview' });

  const collect = () => {
    const out = { name: name.value.trim(), area: area.value.trim(), metric: metric.value.trim(), kind: kind.value, event: event.value };
    if (device.value) out.device = device.value;
    if (kind.value === 'stale') {
      out.after = after.value.trim();
      return out;
    }
    out.op = op.value;
    out.levels = Object.fromEntries(LEVELS.filter((l) => levels[l].value !== '').map((l) => [l, Number(levels[l].value)]));
    out.auto_issue = LEVELS.filter((l) => auto[l].checked);
    if (forDur.value.trim()) out.for = forDur.value.trim();
    if (hysteresis.value !== '') out.hysteresis = Number(hysteresis.value);
    if (clearAfter.value.trim()) out.clear_after = clearAfter.value.trim();
    if (kind.value !== 'threshold') out.window = windowDur.value.trim();
    return out;
  };
  const fail = (error) => { message.textContent = error instanceof ApiError ? error.message : t('common.unreachable'); };

  const test = el('button', { type: 'button', class: 'secondary', id: 'rule-test' }, t('rules.test'));
  test.addEventListener('click', async () => {
    message.textContent = '';
    clear(preview);
    const to = Date.now();
    try {
      const result = await postJson('/api/v1/rules/test', { rule: collect(), from: String(to - 24 * 3600e3), to: String(to) });
      preview.append(el('li', {}, t('rules.test_readings').replace('{n}', result.readings)));
      for (const c of result.transitions) preview.append(el('li', {}, `${formatTime(c.at_ms, { seconds: true })} · ${c.device} · ${stateText(c.from)} → ${stateText(c.to)}`));
      if (!result.transitions.length) preview.append(el('li', {}, t('rules.test_quiet')));
    } catch (error) { fail(error); }
  });
  const save = el('button', { type: 'submit' }, t('rules.save'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    message.textContent = '';
    try {
      if (rule) await putJson(`/api/v1/rules/${rule.id}`, collect());
      else await postJson('/api/v1/rules', collect());
      render(main);
    } catch (error) { fail(error); }
  });
  form.append(
    el('h2', {}, rule ? t('rules.edit') : t('rules.new')),
    ...field('r-name', t('rules.name'), name), ...field('r-area', t('warnings.area'), area),
    ...field('r-device', t('rules.device'), device), ...field('r-metric', t('rules.metric'), metric), metrics,
    ...field('r-kind', t('rules.kind'), kind), ...field('r-op', t('rules.op'), op),
    ...LEVELS.flatMap((l) => field(`r-level-${l}`, t(`level.${l}`), levels[l])),
    ...field('r-for', t('rules.for'), forDur), ...field('r-hysteresis', t('rules.hysteresis'), hysteresis),
    ...field('r-clear', t('rules.clear_after'), clearAfter), ...field('r-window', t('rules.window'), windowDur),
    ...field('r-after', t('rules.after'), after), ...field('r-event', t('warnings.event'), event),
    el('fieldset', {}, el('legend', {}, t('rules.auto_issue')),
      ...LEVELS.map((l) => el('label', { class: 'inline' }, auto[l], ` ${t(`level.${l}`)}`))),
    message, el('p', {}, test, ' ', save), preview);
  return markRequired(form);
}

export async function render(main) {
  clear(main);
  main.append(el('h1', {}, t('page.rules')));
  let rules;
  let devices = [];
  let dir = null;
  try {
    [rules, devices, dir] = await Promise.all([
      getJson('/api/v1/rules').then((r) => r.rules),
      getJson('/api/v1/sensors').then((s) => s.devices).catch(() => []),
      loadAreas(),
    ]);
  } catch (error) {
    main.append(errorBox(error.message, () => render(main)));
    return;
  }
  const editable = can('POST', '/api/v1/rules');
  const list = el('ul', { class: 'warning-list', id: 'rules-list' });
  for (const r of rules) {
    const item = el('li', { class: `warning-card level-${LEVELS.includes(r.state) ? r.state : 'none'}`, 'data-rule': r.id },
      el('strong', { class: 'warning-level' }, `${stateText(r.state)}${r.since ? ` · ${formatTime(r.since)}` : ''}`),
      el('span', { class: 'warning-headline' }, r.name),
      el('p', { class: 'muted small' }, `${r.device || t('rules.any_device')} · ${r.metric} · ${t(`rules.kind_${r.kind}`)} · ${areaLabel(dir, r.area)}`),
      r.quarantine ? el('p', { class: 'error small' }, `${t('rules.quarantined')}：${r.quarantine}`) : null);
    if (editable && !r.quarantine) {
      const edit = el('button', { type: 'button', class: 'secondary' }, t('rules.edit'));
      edit.addEventListener('click', () => { document.getElementById('rule-form')?.remove(); main.append(editor(main, r, devices)); });
      const remove = el('button', { type: 'button', class: 'secondary danger' }, t('rules.delete'));
      remove.addEventListener('click', async () => {
        if (!confirm(t('rules.delete_confirm'))) return;
        try { await del(`/api/v1/rules/${r.id}`); render(main); } catch (error) { main.append(errorBox(error.message)); }
      });
      item.append(el('p', {}, edit, ' ', remove));
    }
    list.append(item);
  }
  main.append(rules.length ? list : el('p', { class: 'muted', id: 'rules-none' }, t('rules.none')));
  if (editable) main.append(editor(main, null, devices));
}
