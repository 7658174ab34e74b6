// The warnings pages: current warnings as coloured cards (the level's name always in text, never colour
// alone), the history, one warning with its timeline, triggering readings, CAP download and the
// actions the node lets this person take, and a form for township staff to issue a warning by hand.
import { getJson, postJson, ApiError } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox } from '../dom.js';
import { currentUser, can } from '../session.js';
import { formatTime } from '../format.js';
import { navigate } from '../router.js';

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
      `${t(`event.${w.event}`)} · ${w.area} · ${formatTime(w.issued_ms || w.updated_ms)}`,
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
  const message = el('p', { class: 'error', role: 'alert' });
  form.append(
    el('h2', {}, t('warnings.issue')),
    el('label', { for: 'w-level' }, t('warnings.level')), level,
    el('label', { for: 'w-event' }, t('warnings.event')), event,
    el('label', { for: 'w-headline' }, t('warnings.headline')), headline,
    el('label', { for: 'w-description' }, t('warnings.description')), description,
    el('label', { for: 'w-instruction' }, t('warnings.instruction')), instruction,
    el('label', { for: 'w-area' }, t('warnings.area')), area,
    message,
    el('button', { type: 'submit' }, t('warnings.issue')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    message.textContent = '';
    try {
      const w = await postJson('/api/v1/warnings', {
        level: level.value, event: event.value, headline: headline.value.trim(),
        description: description.value, instruction: instruction.value, area: area.value.trim(),
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
  let data;
  try {
    data = await getJson('/api/v1/warnings');
  } catch (error) {
    main.append(errorBox(error.message, () => renderList(main)));
    return;
  }
  const current = data.warnings.filter((w) => OPEN.includes(w.state));
  const past = data.warnings.filter((w) => !OPEN.includes(w.state));
  main.append(el('h2', {}, t('warnings.active')));
  main.append(current.length
    ? el('ul', { class: 'warning-list', id: 'warnings-active' }, ...current.map(card))
    : el('p', { class: 'muted', id: 'warnings-none' }, t('warnings.none')));
  if (can('POST', '/api/v1/warnings')) {
    main.append(issueForm((w) => navigate(`/warnings/${w.id}`)));
  }
  if (past.length) {
    main.append(el('h2', {}, t('warnings.history')), el('ul', { class: 'warning-list past' }, ...past.map(card)));
  }
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
  main.append(
    el('p', {}, el('a', { href: '/warnings', 'data-link': true }, `← ${t('page.warnings')}`)),
    el('section', { class: `card warning-card level-${w.level || 'none'}`, id: 'warning-detail' },
      el('h1', {}, w.headline),
      el('p', { class: 'warning-level' }, `${levelName(w.level)} · ${t(`wstate.${w.state}`)} · ${t(`event.${w.event}`)}`,
        w.status !== 'actual' ? ` · ${t(`wstatus.${w.status}`)}` : ''),
      w.description ? el('p', {}, w.description) : null,
      w.instruction ? el('p', {}, el('strong', {}, `${t('warnings.instruction')}：`), w.instruction) : null,
      el('p', { class: 'muted small' }, `${t('warnings.area')}：${(w.areas || []).join('、')}`),
      w.expires_ms ? el('p', { class: 'muted small' }, `${t('warnings.expires')}：${formatTime(w.expires_ms)}`) : null,
      w.issued_ms ? el('p', {}, el('a', { href: `/api/v1/warnings/${w.id}/cap`, download: `${w.id}.cap.xml` }, t('warnings.cap'))) : null));
  if (w.readings && w.readings.length) {
    main.append(el('section', { class: 'card' }, el('h2', {}, t('warnings.readings')),
      el('ul', {}, ...w.readings.map(([at, value]) => el('li', {}, `${formatTime(at, { seconds: true })} · ${value}`)))));
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
