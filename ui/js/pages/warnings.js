// The warnings pages: current warnings as coloured cards (the level's name always in text, never colour
// alone), the history, one warning with its timeline, triggering readings, CAP download and the
// actions the node lets this person take, and a form for township staff to issue a warning by hand.
import { getJson, postJson, ApiError } from '../api.js';
import { t, lang } from '../i18n.js';
import { el, clear, errorBox, markRequired } from '../dom.js';
import { currentUser, can } from '../session.js';
import { formatTime, nodeNow } from '../format.js';
import { navigate } from '../router.js';
import { startView } from '../view.js';

const LEVELS = ['blue', 'yellow', 'orange', 'red'];
const EVENTS = ['flood', 'rainstorm', 'landslide', 'air_pollution', 'water_pollution', 'other'];
const OPEN = ['raised', 'issued'];

function levelName(level) {
  return level ? t(`level.${level}`) : '';
}

function card(w) {
  return el('li', { class: `warning-card level-${w.level || 'none'}` },
    el('a', { href: `/warnings/${w.id}`, 'data-link': true },
      el('strong', { class: 'warning-level' }, `${levelName(w.level)} · ${t(`wstate.${w.state}`)}`),
      el('span', { class: 'warning-headline' }, w.headline)),
    el('p', { class: 'muted small' },
      `${t(`event.${w.event}`)} · ${w.area_name || w.area} · ${formatTime(w.issued_ms || w.updated_ms)}`,
      w.status !== 'actual' ? ` · ${t(`wstatus.${w.status}`)}` : ''));
}

function issueForm(onDone) {
  const me = currentUser();
  const form = el('form', { class: 'card form', id: 'warning-form' });
  const level = el('select', { id: 'w-level', name: 'level' }, ...LEVELS.map((l) => el('option', { value: l }, levelName(l))));
  const event = el('select', { id: 'w-event', name: 'event' }, ...EVENTS.map((e) => el('option', { value: e }, t(`event.${e}`))));
  const headline = el('input', { id: 'w-headline', name: 'headline', required: true, maxlength: 200 });
  const description = el('textarea', { id: 'w-description', name: 'description', rows: 3 });
  const instruction = el('textarea', { id: 'w-instruction', name: 'instruction', rows: 2 });
  const area = el('input', { id: 'w-area', name: 'area', value: me ? me.area : '', required: true, inputmode: 'numeric' });
  // English is optional: when given, the CAP message carries an English info beside the Chinese.
  const headlineEn = el('input', { id: 'w-headline-en', name: 'headline_en', maxlength: 200, lang: 'en' });
  const descriptionEn = el('textarea', { id: 'w-description-en', name: 'description_en', rows: 2, lang: 'en' });
  const instructionEn = el('textarea', { id: 'w-instruction-en', name: 'instruction_en', rows: 2, lang: 'en' });
  const english = el('details', { id: 'w-english' },
    el('summary', {}, t('warnings.english')),
    el('label', { for: 'w-headline-en' }, t('warnings.headline_en')), headlineEn,
    el('label', { for: 'w-description-en' }, t('warnings.description_en')), descriptionEn,
    el('label', { for: 'w-instruction-en' }, t('warnings.instruction_en')), instructionEn);
  const message = el('p', { class: 'error', role: 'alert' });
  form.append(
    el('h2', {}, t('warnings.issue')),
    el('label', { for: 'w-level' }, t('warnings.level')), level,
    el('label', { for: 'w-event' }, t('warnings.event')), event,
    el('label', { for: 'w-headline' }, t('warnings.headline')), headline,
    el('label', { for: 'w-description' }, t('warnings.description')), description,
    el('label', { for: 'w-instruction' }, t('warnings.instruction')), instruction,
    el('label', { for: 'w-area' }, t('warnings.area')), area,
    english,
    message,
    el('button', { type: 'submit' }, t('warnings.issue')));
  markRequired(form);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    message.textContent = '';
    try {
      const w = await postJson('/api/v1/warnings', {
        level: level.value, event: event.value, headline: headline.value.trim(),
        description: description.value, instruction: instruction.value, area: area.value.trim(),
        ...(headlineEn.value.trim() ? {
          headline_en: headlineEn.value.trim(), description_en: descriptionEn.value, instruction_en: instructionEn.value,
        } : {}),
      });
      onDone(w);
    } catch (error) {
      message.textContent = error instanceof ApiError ? error.message : t('common.unreachable');
    }
  });
  return form;
}

export async function renderList(main) {
  clear(main);
  main.append(el('h1', { 'data-i18n': 'page.warnings' }, t('page.warnings')));
  const lists = el('div', { id: 'warning-lists' });
  main.append(lists);
  if (can('POST', '/api/v1/warnings')) {
    main.append(issueForm((w) => navigate(`/warnings/${w.id}`)));
  }
  const view = startView();
  // A warning event reloads the lists only, so a form being filled in is never lost.
  view.listen(window, 'township:warning', () => fillLists(lists, view));
  await fillLists(lists, view);
}

async function fillLists(lists, view) {
  let data;
  try {
    data = await getJson('/api/v1/warnings');
  } catch (error) {
    lists.replaceChildren(errorBox(error.message, () => fillLists(lists, view)));
    return;
  }
  if (!view.alive) return;
  const current = data.warnings.filter((w) => OPEN.includes(w.state));
  const past = data.warnings.filter((w) => !OPEN.includes(w.state));
  lists.replaceChildren(
    el('h2', {}, t('warnings.active')),
    current.length
      ? el('ul', { class: 'warning-list', id: 'warnings-active' }, ...current.map(card))
      : el('p', { class: 'muted', id: 'warnings-none' }, t('warnings.none')),
    ...(past.length ? [el('h2', {}, t('warnings.history')), el('ul', { class: 'warning-list past' }, ...past.map(card))] : []));
}

export async function renderDetail(main, { id }) {
  clear(main);
  let w;
  try {
    w = await getJson(`/api/v1/warnings/${encodeURIComponent(id)}`);
  } catch (error) {
    main.append(errorBox(error.message, () => renderDetail(main, { id })));
    return;
  }
  // In English, each English text the warning has; the Chinese one where it has none.
  const text = (key) => (lang() === 'en' && w[`${key}_en`]) || w[key] || '';
  main.append(
    el('p', {}, el('a', { href: '/warnings', 'data-link': true }, `← ${t('page.warnings')}`)),
    el('section', { class: `card warning-card level-${w.level || 'none'}`, id: 'warning-detail' },
      el('h1', {}, text('headline')),
      el('p', { class: 'warning-level' }, `${levelName(w.level)} · ${t(`wstate.${w.state}`)} · ${t(`event.${w.event}`)}`,
        w.status !== 'actual' ? ` · ${t(`wstatus.${w.status}`)}` : ''),
      text('description') ? el('p', {}, text('description')) : null,
      text('instruction') ? el('p', {}, el('strong', {}, `${t('warnings.instruction')}：`), text('instruction')) : null,
      el('p', { class: 'muted small' }, `${t('warnings.area')}：${(w.areas || []).join('、')}`),
      w.expires_ms ? el('p', { class: 'muted small' }, `${t('warnings.expires')}：${formatTime(w.expires_ms)}`) : null,
      w.issued_ms ? el('p', {}, el('a', { href: `/api/v1/warnings/${w.id}/cap`, download: `${w.id}.cap.xml` }, t('warnings.cap'))) : null));
  if (w.readings && w.readings.length) {
    const chart = el('div', { class: 'warning-chart', id: 'warning-chart' });
    main.append(el('section', { class: 'card' }, el('h2', {}, t('warnings.readings')), chart,
      el('ul', { class: 'small' }, ...w.readings.map(([at, value]) => el('li', {}, `${formatTime(at, { seconds: true })} · ${value}`)))));
    if (w.source && w.source.rule) drawReadings(chart, w);
  }
  const actions = el('section', { class: 'card', id: 'warning-actions' });
  const message = el('p', { class: 'error', role: 'alert' });
  const act = async (body) => {
    message.textContent = '';
    try {
      await postJson(`/api/v1/warnings/${w.id}/transitions`, body);
      renderDetail(main, { id });
    } catch (error) {
      message.textContent = error instanceof ApiError ? error.message : t('common.unreachable');
    }
  };
  if (w.allowed_actions.includes('update')) {
    const level = el('select', { id: 'w-new-level' }, ...LEVELS.map((l) => el('option', { value: l, selected: l === w.level }, levelName(l))));
    const button = el('button', { type: 'button', class: 'secondary' }, t('warnings.update'));
    button.addEventListener('click', () => act({ action: 'update', level: level.value }));
    actions.append(el('label', { for: 'w-new-level' }, t('warnings.level')), level, button);
  }
  if (w.allowed_actions.includes('issue')) {
    const button = el('button', { type: 'button' }, t('warnings.issue'));
    button.addEventListener('click', () => act({ action: 'issue' }));
    actions.append(button);
  }
  if (w.allowed_actions.includes('cancel')) {
    const button = el('button', { type: 'button', class: 'secondary danger' }, t('warnings.cancel'));
    button.addEventListener('click', () => { if (confirm(t('warnings.cancel_confirm'))) act({ action: 'cancel' }); });
    actions.append(button);
  }
  if (actions.childNodes.length) main.append(actions, message);
  main.append(el('section', { class: 'card' }, el('h2', {}, t('warnings.timeline')),
    el('ol', { class: 'timeline' }, ...w.transitions.map((tr) => el('li', {},
      el('strong', {}, t(`waction.${tr.action}`)), ` · ${tr.actor === 'system' ? t('warnings.by_node') : tr.actor} · ${formatTime(tr.at_ms, { seconds: true })}`,
      tr.data && tr.data.level ? ` · ${levelName(tr.data.level)}` : '')))));
  if (w.conflicts.length) {
    main.append(el('section', { class: 'card' }, el('h2', {}, t('warnings.conflicts')),
      el('ul', {}, ...w.conflicts.map((c) => el('li', {}, `${t(`waction.${c.transition.action}`)} · ${c.transition.actor}: ${c.reason}`)))));
  }
}

const SVG = 'http://www.w3.org/2000/svg';
const svg = (name, attrs) => {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
};

// A small chart of what the rule watched, from an hour before the warning until it ended (or now),
// with the rule's level lines and the triggering readings marked: an inline SVG, no library, so it
// draws on an old phone. Nothing is shown when the rule or the readings cannot be had.
async function drawReadings(box, w) {
  const [firstAt] = w.readings[0];
  const from = Math.min(firstAt, ...w.transitions.map((tr) => tr.at_ms)) - 3600e3;
  const ended = ['cancelled', 'expired', 'cleared'].includes(w.state) ? Math.max(...w.transitions.map((tr) => tr.at_ms)) : nodeNow();
  const to = Math.max(ended, firstAt) + 600e3;
  let rule;
  let series;
  try {
    rule = await getJson(`/api/v1/rules/${encodeURIComponent(w.source.rule)}`);
    const device = rule.device;
    if (!device) return;
    const q = new URLSearchParams({ from: String(Math.floor(from)), to: String(Math.ceil(to)), metric: rule.metric });
    if (to - from > 6 * 3600e3) q.set('step', '1m');
    series = await getJson(`/api/v1/sensors/${encodeURIComponent(device)}/readings?${q}`, { timeoutMs: 20000 });
  } catch (_) {
    return;
  }
  const points = (series.points || []).map((p) => [p.t, p.value ?? p.mean]).filter(([, v]) => Number.isFinite(v));
  if (!points.length) return;
  // Level lines and triggering values only where they are on the readings' scale: a sum's or a
  // rate's are not, so for those the chart shows the readings alone.
  const sameScale = rule.kind === 'threshold';
  const levels = sameScale ? Object.entries(rule.levels || {}).filter(([, v]) => Number.isFinite(v)) : [];
  const triggers = sameScale ? w.readings : [];
  const values = [...points.map(([, v]) => v), ...triggers.map(([, v]) => v), ...levels.map(([, v]) => v)];
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi === lo) { hi += 1; lo -= 1; }
  // Drawn at the box's own width so text and dots keep their size on a phone and a PC alike.
  const W = Math.max(280, Math.round(box.clientWidth || 600)); const H = 160; const pad = 14;
  const x = (at) => pad + ((at - from) / (to - from)) * (W - 2 * pad);
  const y = (v) => H - pad - ((v - lo) / (hi - lo)) * (H - 2 * pad);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'warning-chart-svg' });
  root.setAttribute('aria-label', `${series.name || rule.metric} ${formatTime(from)} – ${formatTime(to)}`);
  for (const [level, value] of levels) {
    root.append(svg('line', { x1: pad, x2: W - pad, y1: y(value), y2: y(value), class: `level-line level-${level}` }));
    const label = svg('text', { x: W - pad - 2, y: y(value) - 2, 'text-anchor': 'end', class: 'level-label' });
    label.textContent = `${levelName(level)} ${value}`;
    root.append(label);
  }
  for (const [value, at] of [[hi, pad + 8], [lo, H - 4]]) {
    const label = svg('text', { x: 2, y: at, class: 'level-label' });
    label.textContent = String(Math.round(value * 100) / 100);
    root.append(label);
  }
  root.append(svg('polyline', { points: points.map(([at, v]) => `${x(at).toFixed(1)},${y(v).toFixed(1)}`).join(' '), class: 'series' }));
  for (const [at, v] of triggers) root.append(svg('circle', { cx: x(at), cy: y(v), r: 4, class: 'trigger' }));
  box.replaceChildren(root, el('p', { class: 'muted small' }, `${series.name || rule.metric}${series.unit ? ` (${series.unit})` : ''} · ${formatTime(from)} – ${formatTime(to)}`));
}

// The banner every page shows while an orange or red warning covers the user's area.
export async function refreshBanner() {
  const banner = document.getElementById('warning-banner');
  if (!banner) return;
  if (!currentUser()) {
    banner.hidden = true;
    return;
  }
  try {
    const data = await getJson('/api/v1/warnings?state=raised,issued&level=orange,red', { timeoutMs: 8000 });
    const top = data.warnings.find((w) => w.level === 'red') || data.warnings[0];
    banner.replaceChildren();
    if (!top) {
      banner.hidden = true;
      return;
    }
    banner.className = `warning-banner level-${top.level}`;
    banner.append(el('a', { href: `/warnings/${top.id}`, 'data-link': true },
      `⚠ ${levelName(top.level)}${t('warnings.banner')}：${top.headline}`,
      data.warnings.length > 1 ? ` (+${data.warnings.length - 1})` : ''));
    banner.hidden = false;
  } catch (_) {
    // A failed check keeps the banner as it was: a warning never disappears because Wi-Fi dropped.
  }
}
