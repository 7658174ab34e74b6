// The node page (/node, "本节点"): who this node is and whether it is healthy, from /api/v1/node and /readyz.
// It was the landing page; people now land on their work (home.js), and this stays open to anyone.
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox } from '../dom.js';

function formatUptime(seconds) {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d > 0) return `${d} ${t('unit.days')} ${h} ${t('unit.hours')}`;
  if (h > 0) return `${h} ${t('unit.hours')} ${m} ${t('unit.minutes')}`;
  return `${m} ${t('unit.minutes')}`;
}

async function readiness() {
  try {
    await getJson('/readyz', { timeoutMs: 5000 });
    return true;
  } catch (_) {
    return false;
  }
}

export async function render(main) {
  clear(main);
  main.append(el('h1', { 'data-i18n': 'overview.title' }, t('overview.title')));
  let node;
  try {
    node = await getJson('/api/v1/node');
  } catch (error) {
    main.append(errorBox(t('common.unreachable'), () => render(main)));
    return;
  }
  const ready = await readiness();
  const facts = [
    ['overview.name', node.name],
    ['overview.role', t(`role.${node.role}`)],
    ['overview.area', node.area],
    ['overview.node_id', node.node_id],
    ['overview.public_key', node.public_key],
    ['overview.version', node.version],
    ['overview.uptime', formatUptime(node.uptime_seconds)],
  ];
  const list = el('dl', { class: 'facts' });
  for (const [key, value] of facts) {
    list.append(el('dt', { 'data-i18n': key }, t(key)), el('dd', {}, String(value)));
  }
  const health = el('p', {},
    el('span', { 'data-i18n': 'overview.ready' }, t('overview.ready')), ' ',
    el('span', { class: ready ? 'badge ok' : 'badge bad', 'data-i18n': ready ? 'overview.ready_ok' : 'overview.ready_bad' },
      t(ready ? 'overview.ready_ok' : 'overview.ready_bad')));
  main.append(
    el('section', { class: 'card' }, el('h2', { 'data-i18n': 'overview.node' }, t('overview.node')), list),
    el('section', { class: 'card' }, el('h2', { 'data-i18n': 'overview.health' }, t('overview.health')), health),
  );
}
