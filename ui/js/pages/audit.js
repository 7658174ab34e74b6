// The audit log page: newest first, filtered, paged backwards.
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, field, foldable } from '../dom.js';
import { formatTime } from '../format.js';

export async function render(main) {
  clear(main);
  main.append(el('h1', { 'data-i18n': 'page.audit' }, t('page.audit')));
  const inputs = {
    actor: el('input', { name: 'actor', id: 'audit-actor' }),
    action: el('input', { name: 'action', id: 'audit-action', placeholder: 'auth / record / user.password' }),
    target: el('input', { name: 'target', id: 'audit-target' }),
    from: el('input', { name: 'from', id: 'audit-from', type: 'datetime-local' }),
    to: el('input', { name: 'to', id: 'audit-to', type: 'datetime-local' }),
  };
  const form = el('form', { class: 'card form filters', id: 'audit-filters' });
  for (const [key, input] of Object.entries(inputs)) {
    form.append(field(el('label', { for: input.id, 'data-i18n': `audit.${key}` }, t(`audit.${key}`)), input));
  }
  form.append(el('button', { type: 'submit', 'data-i18n': 'audit.search' }, t('audit.search')));
  const body = el('tbody');
  const table = el('table', { class: 'table', id: 'audit-table' },
    el('thead', {}, el('tr', {}, ...['audit.seq', 'audit.time', 'audit.actor', 'audit.action', 'audit.target', 'audit.detail']
      .map((k) => el('th', { 'data-i18n': k }, t(k))))), body);
  const more = el('button', { type: 'button', class: 'secondary', hidden: true, 'data-i18n': 'audit.more' }, t('audit.more'));
  const status = el('p', { class: 'muted' });
  // The table scrolls sideways on a phone: a region keyboard users can focus and scroll.
  const scroller = el('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': t('page.audit') }, table);
  main.append(foldable(form, { id: 'audit-filters-box' }), el('section', { class: 'card' }, scroller, status, more));

  let before = null;
  const load = async (reset) => {
    if (reset) { clear(body); before = null; }
    const q = new URLSearchParams({ limit: '50' });
    for (const key of ['actor', 'action', 'target']) if (inputs[key].value.trim()) q.set(key, inputs[key].value.trim());
    for (const key of ['from', 'to']) if (inputs[key].value) q.set(key, String(new Date(inputs[key].value).getTime()));
    if (before !== null) q.set('before', String(before));
    try {
      const data = await getJson(`/api/v1/audit?${q}`);
      for (const e of data.entries) {
        body.append(el('tr', {}, el('td', {}, e.seq), el('td', {}, formatTime(e.at_ms, { seconds: true })), el('td', {}, e.actor),
          el('td', {}, e.action), el('td', { class: 'wrap' }, e.target), el('td', { class: 'wrap detail' }, e.detail)));
      }
      before = data.next_before;
      more.hidden = before === null || before === undefined;
      status.textContent = body.children.length === 0 ? t('audit.none') : '';
    } catch (e) {
      status.replaceChildren(errorBox(e.message, () => load(reset)));
    }
  };
  form.addEventListener('submit', (event) => { event.preventDefault(); load(true); });
  more.addEventListener('click', () => load(false));
  await load(true);
}
