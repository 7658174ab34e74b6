// The landing page: what waits for the signed-in person, by role (work-logic.js decides which sections
// and in which order). A grid worker gets the report button and her checks first; township staff new,
// overdue and escalated reports and the warnings in force; a department handler the department's
// queue; county IT the nodes' health and the escalations. Each section counts, shows a few rows and
// links to the full list. It refreshes when the work summary changes (work.js).
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox } from '../dom.js';
import { currentUser, can } from '../session.js';
import { formatTime, offlineAge } from '../format.js';
import { startView } from '../view.js';
import { latest, onSummary } from '../work.js';
import {
  SECTION_LIMIT, sectionsFor, lateness, overdueFirst, mostLateFirst, mergeRows, holder, nodeUnhealthy, nodesByHealth,
} from '../work-logic.js';

// Summaries come at most every 2 s; a short pause still folds a burst of them into one reload.
const REFRESH_DELAY_MS = 400;

const stateBadge = (state) => el('span', { class: `badge state-${state}`, 'data-state': state }, t(`state.${state}`));

function dueBadge(dueState) {
  if (dueState !== 'near' && dueState !== 'overdue') return null;
  return el('span', { class: `badge due-${dueState}` }, t(`due.${dueState}`));
}

function incidentRow(row, section, now) {
  const late = section.lateness || row.due_state === 'overdue' ? lateness(row.due_ms, now) : null;
  const who = holder(row);
  const lines = [el('strong', { class: 'work-item-title' }, row.title)];
  if (section.highlight) lines.push(el('span', { class: 'work-flag' }, t('work.to_verify')));
  if (late) {
    lines.push(el('span', { class: 'work-late' }, t(late.key, { n: late.n }), ' · ', t(who.key, { name: who.name })));
  }
  const place = row.area_name || row.area;
  const by = section.id === 'mine' || section.id === 'verify' ? null : row.reporter_name || row.reporter;
  lines.push(el('span', { class: 'muted small work-meta' }, [row.category, place, by, formatTime(row.created_ms)].filter(Boolean).join(' · ')));
  lines.push(el('span', { class: 'badges' }, stateBadge(row.state), ' ', late ? null : dueBadge(row.due_state)));
  return el('li', { class: `work-item${section.highlight ? ' highlight' : ''}`, 'data-id': row.id },
    el('a', { href: `/incidents/${row.id}`, 'data-link': true, class: 'work-item-link' }, ...lines));
}

function warningRow(w) {
  const level = w.level ? t(`level.${w.level}`) : '';
  return el('li', { class: `work-item warning-item level-${w.level || 'none'}`, 'data-id': w.id },
    el('a', { href: `/warnings/${w.id}`, 'data-link': true, class: 'work-item-link' },
      el('strong', { class: 'warning-level' }, `${level} · ${t(`wstate.${w.state}`)}`),
      el('span', { class: 'work-item-title' }, w.headline),
      el('span', { class: 'muted small work-meta' }, `${t(`event.${w.event}`)} · ${w.area} · ${formatTime(w.issued_ms || w.updated_ms)}`)));
}

function nodeRow(n) {
  const state = n.revoked ? el('span', { class: 'badge bad' }, t('nodes.revoked'))
    : n.connected ? el('span', { class: 'badge ok' }, t('nodes.connected')) : el('span', { class: 'badge bad' }, t('nodes.offline'));
  const seen = n.last_seen_ms ? t('work.node_seen', { when: formatTime(n.last_seen_ms) }) : t('work.node_never');
  return el('li', { class: `work-item node-item${nodeUnhealthy(n) ? ' unhealthy' : ''}`, 'data-node': n.node_id },
    el('div', { class: 'work-item-link' },
      el('strong', { class: 'work-item-title' }, n.name, ' ', state),
      el('span', { class: 'muted small work-meta' }, [n.area_name || n.area, seen,
        t('work.node_pending', { out: n.pending_out ?? 0, in: n.pending_in ?? 0 })].join(' · ')),
      n.last_error ? el('span', { class: 'small error work-node-error' }, n.last_error) : null));
}

// The rows of one section and its count, from the node (or the phone's copy of a list).
async function load(section) {
  const limit = `limit=${SECTION_LIMIT}`;
  if (section.source === 'warnings') {
    const data = await getJson(`/api/v1/warnings?${section.filter}`);
    const rows = (data.warnings || []).filter((w) => w.state === 'issued');
    return { rows: rows.slice(0, SECTION_LIMIT), count: rows.length, offlineAt: data.offlineAt };
  }
  if (section.source === 'nodes') {
    const data = await getJson('/api/v1/nodes');
    const nodes = nodesByHealth(data.nodes || []);
    return { rows: nodes.slice(0, SECTION_LIMIT), count: nodes.filter(nodeUnhealthy).length, total: nodes.length };
  }
  if (section.overdueFirst) {
    // The overdue ones asked for apart, so they head the queue however long it is.
    const [late, all] = await Promise.all([
      getJson(`/api/v1/incidents?${section.filter}&due_state=overdue&${limit}`),
      getJson(`/api/v1/incidents?${section.filter}&${limit}`),
    ]);
    return { rows: mergeRows([overdueFirst(late.incidents), overdueFirst(all.incidents)]), count: all.total_capped ? null : all.total, offlineAt: all.offlineAt };
  }
  const data = await getJson(`/api/v1/incidents?${section.filter}&${limit}`);
  const rows = section.lateness ? mostLateFirst(data.incidents) : data.incidents;
  // A capped total is a floor, not a count: the summary's count is then the better one.
  return { rows, count: data.total_capped ? null : data.total, offlineAt: data.offlineAt };
}

function sectionBox(section) {
  const headingId = `work-h-${section.id}`;
  const n = el('span', { class: 'work-n', id: `work-n-${section.id}` });
  const all = el('a', { href: section.href, 'data-link': true, class: 'work-all', id: `work-all-${section.id}` }, t('work.all'));
  const body = el('div', { class: 'work-body' }, el('p', { class: 'loading' }, t('common.loading')));
  const box = el('section', {
    class: `card work-section${section.highlight ? ' highlight' : ''}`, id: `work-${section.id}`,
    'data-kind': section.id, 'aria-labelledby': headingId,
  },
  el('div', { class: 'work-section-head' }, el('h2', { id: headingId }, t(section.titleKey), ' ', n), all),
  body);
  return { box, n, body, all };
}

async function fill(section, parts, now) {
  let result;
  try {
    result = await load(section);
  } catch (error) {
    parts.body.replaceChildren(errorBox(error.message));
    return null;
  }
  // The list's own total where it has one: it is the same query as the summary's, and newer (the
  // summary is looked at every 2 s at most), so the number always matches the rows below it.
  const count = result.count ?? section.count ?? 0;
  parts.n.textContent = String(count);
  parts.box.dataset.count = String(count);
  let content;
  if (!result.rows.length) {
    content = [el('p', { class: 'muted work-empty' }, t(`work.empty_${section.id}`))];
  } else {
    const row = section.source === 'warnings' ? warningRow : section.source === 'nodes' ? nodeRow : (r) => incidentRow(r, section, now);
    content = [el('ul', { class: 'work-list', id: `work-list-${section.id}` }, ...result.rows.map(row))];
  }
  if (section.source === 'nodes' && result.count) {
    content.unshift(el('p', { class: 'error small' }, t('work.nodes_unhealthy', { n: result.count })));
  }
  parts.body.replaceChildren(...content);
  return result;
}

async function summaryNow() {
  const known = latest();
  if (known) return known;
  try {
    return await getJson('/api/v1/incidents/work', { timeoutMs: 8000 });
  } catch (_) {
    return null;
  }
}

export async function render(main) {
  const view = startView();
  const me = currentUser();
  clear(main);
  main.append(el('h1', { 'data-i18n': 'work.title' }, t('work.title')));
  // Nothing above it for a grid worker: reporting is what she opens the app for.
  if (me.role === 'grid_worker' && can('POST', '/api/v1/incidents')) {
    main.append(el('a', { href: '/incidents/new', 'data-link': true, class: 'button report-button', id: 'work-report' }, t('work.report')));
  }
  const note = el('p', { class: 'offline-note', id: 'work-offline', hidden: true });
  const sectionsBox = el('div', { id: 'work-sections' });
  main.append(note, sectionsBox);

  let shown = null;
  const refresh = async (summary) => {
    shown = JSON.stringify(summary);
    const sections = sectionsFor(me, summary, { canNodes: can('GET', '/api/v1/nodes') });
    if (!sections.length) {
      sectionsBox.replaceChildren(el('p', { class: 'muted' }, t('work.no_role')));
      sectionsBox.dataset.ready = '';
      return;
    }
    // Kept in place between refreshes, so the page does not jump while someone reads it.
    const boxes = sections.map((s) => {
      const existing = document.getElementById(`work-${s.id}`);
      if (existing && sectionsBox.contains(existing)) {
        const parts = { box: existing, n: existing.querySelector('.work-n'), body: existing.querySelector('.work-body'), all: existing.querySelector('.work-all') };
        parts.all.setAttribute('href', s.href);
        return parts;
      }
      return sectionBox(s);
    });
    sectionsBox.replaceChildren(...boxes.map((b) => b.box));
    const now = Date.now();
    const results = await Promise.all(sections.map((s, i) => fill(s, boxes[i], now)));
    if (!view.alive) return;
    const offlineAt = Math.max(0, ...results.map((r) => r?.offlineAt || 0));
    note.hidden = !offlineAt && summary !== null;
    note.textContent = offlineAt ? offlineAge(offlineAt) : summary === null ? t('work.unavailable') : '';
    sectionsBox.dataset.ready = '';
  };
  // One refresh at a time, in order; a burst of summaries becomes one refresh with the newest.
  let chain = summaryNow().then(refresh);
  let timer = null;
  view.add(onSummary((summary) => {
    if (!view.alive || JSON.stringify(summary) === shown) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      // Looked at again when its turn comes: the refresh before may have shown this one already.
      chain = chain.catch(() => {}).then(() => (view.alive && JSON.stringify(latest()) !== shown ? refresh(latest()) : null));
    }, REFRESH_DELAY_MS);
  }));
  view.add(() => clearTimeout(timer));
  await chain;
}
