// The nodes page (county IT, admin): downstream nodes with their health and lag, enrollment by public
// key, and revocation.
import { getJson, postJson, del } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, markRequired } from '../dom.js';
import { formatTime } from '../format.js';

export async function render(main) {
  clear(main);
  main.append(el('h1', { 'data-i18n': 'page.nodes' }, t('page.nodes')));
  const list = el('section', { class: 'card' });
  const reload = async () => {
    clear(list);
    try {
      const { nodes } = await getJson('/api/v1/nodes');
      if (nodes.length === 0) {
        list.append(el('p', { class: 'muted' }, t('nodes.none')));
        return;
      }
      const head = ['nodes.name', 'nodes.area', 'nodes.state', 'nodes.last_seen', 'nodes.pending', 'nodes.version', 'nodes.error', 'users.actions']
        .map((k) => el('th', {}, t(k)));
      const rows = nodes.map((n) => {
        const state = n.revoked ? el('span', { class: 'badge bad' }, t('nodes.revoked'))
          : n.connected ? el('span', { class: 'badge ok' }, t('nodes.connected')) : el('span', { class: 'badge' }, t('nodes.offline'));
        const actions = el('td');
        if (!n.revoked) {
          const revoke = el('button', { type: 'button', class: 'secondary small danger' }, t('nodes.revoke'));
          revoke.addEventListener('click', async () => {
            if (!confirm(`${t('nodes.revoke')} ${n.name}?`)) return;
            try { await del(`/api/v1/nodes/${encodeURIComponent(n.node_id)}`); await reload(); } catch (e) { alert(e.message); }
          });
          actions.append(revoke);
        }
        return el('tr', { 'data-node': n.node_id }, el('td', {}, n.name), el('td', { title: n.area }, n.area_name || n.area), el('td', {}, state),
          el('td', {}, formatTime(n.last_seen_ms)), el('td', {}, String(n.pending_out)), el('td', {}, n.version || '—'),
          el('td', { class: 'wrap' }, n.last_error || '—'), actions);
      });
      list.append(el('div', { class: 'scroll' }, el('table', { class: 'table', id: 'nodes-table' }, el('thead', {}, el('tr', {}, ...head)), el('tbody', {}, ...rows))));
    } catch (e) {
      list.append(errorBox(e.message, reload));
    }
  };
  const key = el('input', { id: 'n-key', required: true, spellcheck: 'false' });
  const area = el('input', { id: 'n-area', required: true, inputmode: 'numeric' });
  const name = el('input', { id: 'n-name', required: true });
  const error = el('p', { class: 'error', hidden: true });
  const form = el('form', { class: 'card form', id: 'enroll-form' }, el('h2', {}, t('nodes.enroll')),
    el('label', { for: 'n-key' }, t('nodes.public_key')), key,
    el('label', { for: 'n-area' }, t('nodes.area')), area,
    el('label', { for: 'n-name' }, t('nodes.name')), name, error,
    el('button', { type: 'submit' }, t('nodes.enroll')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.hidden = true;
    try {
      await postJson('/api/v1/nodes', { public_key: key.value.trim(), area: area.value.trim(), name: name.value.trim() });
      form.reset();
      await reload();
    } catch (err) {
      error.hidden = false;
      error.textContent = err.message;
    }
  });
  main.append(list, markRequired(form));
  await reload();
}
