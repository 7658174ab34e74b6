// The nodes page (county IT, admin): downstream nodes with their health and lag, enrollment by public
// key, and revocation; the nodes further down as the children report them (villages under a
// township), grouped by the child they came through, each with the age of its report; and the audit
// chains of every node below as checked here, with an alarm at the top when one was tampered with.
import { getJson, postJson, del } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, markRequired } from '../dom.js';
import { ago, formatTime, nodeNow } from '../format.js';
import { chainSummary, brokenFirst, countBroken, alarmKey, nodeLabel, viaLabel, shortId } from '../chains-logic.js';
import { belowGroups, linkBadgeSpec, reporter, treeNodes, REPORT_OUTDATED_MS } from '../cockpit-logic.js';

const OUTDATED_MINUTES = Math.round(REPORT_OUTDATED_MS / 60e3);

const CHAINS_ID = 'audit-chains';

// A node id cut short for a cell, the full id as its tooltip.
function idNode(label) {
  return label.named ? el('span', { title: label.id }, label.text) : el('span', { class: 'node-id', title: label.id }, label.text);
}

// A chain's check in one cell: "完整 · 已核 N 条，签名至 M", "未收到", or the alarm with the node's
// reason (English, from the server) on a smaller line under it.
function chainNode(chain, { short = false } = {}) {
  const s = chainSummary(chain);
  const checked = chain && chain.checked_ms ? t('nodes.chain_checked', { time: formatTime(chain.checked_ms, { seconds: true }) }) : null;
  if (s.state === 'none') return el('span', { class: 'chain-none', 'data-chain': 'none' }, t(s.key));
  if (s.state === 'intact') {
    return el('span', { class: 'chain-ok', 'data-chain': 'intact', title: checked },
      short ? t('nodes.chain_intact_short') : t(s.key, s.params));
  }
  return el('div', { class: 'chain-broken-text', 'data-chain': 'broken', title: checked },
    el('span', { class: 'badge chain-bad' }, t(s.key, s.params)),
    s.problem ? el('p', { class: 'small chain-problem' },
      el('span', { class: 'chain-problem-label' }, t('nodes.chain_reason')), el('span', { lang: 'en' }, s.problem)) : null);
}

function chainsTable(chains, byId) {
  const head = ['nodes.chain_node', 'nodes.state', 'nodes.chain_entries', 'nodes.chain_signed', 'nodes.chain_via', 'nodes.area_name', 'nodes.chain_checked_at']
    .map((k) => el('th', { 'data-i18n': k }, t(k)));
  const rows = brokenFirst(chains).map((c) => {
    const who = nodeLabel(c.origin, c.name, byId);
    const node = byId.get(c.origin);
    const areaCode = c.area || (node && node.area) || null;
    const areaName = (node && node.area === areaCode && node.area_name) || areaCode;
    const via = viaLabel(c, byId);
    const viaCell = via.kind === 'direct' ? t('nodes.chain_direct') : via.kind === 'node' ? idNode(via) : '—';
    const broken = c.intact === false;
    return el('tr', { 'data-origin': c.origin, class: broken ? 'chain-broken' : null },
      el('td', {}, idNode(who)), el('td', { class: 'chain' }, chainNode(c, { short: true })),
      el('td', {}, String(c.entries ?? 0)), el('td', {}, c.signed_seq > 0 ? String(c.signed_seq) : t('nodes.chain_unsigned')),
      el('td', {}, viaCell), el('td', { title: areaCode }, areaName || '—'),
      el('td', {}, formatTime(c.checked_ms, { seconds: true })));
  });
  const table = el('table', { class: 'table', id: 'chains-table' }, el('thead', {}, el('tr', {}, ...head)), el('tbody', {}, ...rows));
  // Nothing in it to focus, so the scroller itself is the stop a keyboard scrolls it from.
  return el('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-labelledby': `${CHAINS_ID}-title` }, table);
}

// A refusal's reason is also in the row's error column; on the badge it is at hand where the eye is.
function linkBadge(n) {
  const b = linkBadgeSpec(n);
  return el('span', { class: `badge${b.tone ? ` ${b.tone}` : ''}`, 'data-link-state': b.state, title: b.reason }, t(b.key));
}

// When a report from below was made and how long ago, marked when too old to be current; as before
// (when it arrived) for a parent too old to say.
function reportCell(n, tree) {
  const by = reporter(n, tree);
  const byLine = by ? el('span', { class: 'muted small report-by', title: by.id }, t('nodes.reported_by', { name: by.name || shortId(by.id) })) : null;
  if (!n.report) return el('td', {}, formatTime(n.reported_ms), byLine);
  return el('td', { class: n.outdated ? 'report-age outdated' : 'report-age', 'data-outdated': n.outdated ? '' : null },
    el('span', { title: formatTime(n.report.at) }, t('nodes.report_age', { age: ago(n.report.at) })),
    n.outdated ? el('span', { class: 'badge warn report-outdated', title: t('nodes.report_outdated_help', { minutes: OUTDATED_MINUTES }) }, t('nodes.report_outdated')) : null,
    byLine);
}

// The nodes under the children, one table per child they came through, the disconnected and the
// tampered first. What a child reports is as of its last report: the group says so when the child
// itself is not connected, and when reports have not been renewed for longer than an unchanged one
// takes to come again (the reporting node, or a link on the way, has stopped getting through). `now`
// is this node's clock.
function belowSection(data, now) {
  const section = el('section', { class: 'card', id: 'nodes-below', 'aria-labelledby': 'nodes-below-title' },
    el('h2', { id: 'nodes-below-title', 'data-i18n': 'nodes.below_title' }, t('nodes.below_title')),
    el('p', { class: 'muted small', 'data-i18n': 'nodes.below_help' }, t('nodes.below_help')));
  const groups = belowGroups(data, now);
  const tree = treeNodes(data, now);
  if (groups.length === 0) {
    section.append(el('p', { class: 'muted', id: 'nodes-below-none' }, t('nodes.below_none')));
    return section;
  }
  const head = ['nodes.name', 'nodes.state', 'nodes.chain', 'nodes.area_name', 'nodes.last_seen', 'nodes.pending_io', 'nodes.version', 'nodes.error', 'nodes.reported_at'];
  groups.forEach((g, i) => {
    const title = t('nodes.below_via', { name: g.name || shortId(g.via) });
    const headingId = `nodes-below-${i}`;
    const rows = g.rows.map((n) => {
      const broken = n.chain && n.chain.intact === false;
      return el('tr', { 'data-node': n.node_id, 'data-link-state': linkBadgeSpec(n).state, class: broken ? 'chain-broken' : null },
        el('td', { title: n.node_id }, n.name || shortId(n.node_id)), el('td', {}, linkBadge(n)),
        el('td', { class: 'chain' }, chainNode(n.chain, { short: true })),
        el('td', { title: n.area }, n.area_name || n.area || '—'),
        el('td', {}, formatTime(n.last_seen_ms)),
        el('td', {}, `${n.pending_out ?? 0} / ${n.pending_in ?? 0}`),
        el('td', {}, n.version || '—'),
        el('td', { class: 'wrap' }, n.last_error || '—'),
        reportCell(n, tree));
    });
    section.append(...[
      el('h3', { id: headingId, class: 'below-via', 'data-via': g.via }, title),
      g.stale ? el('p', { class: 'notice small below-stale' }, t('nodes.below_stale')) : null,
      g.outdated ? el('p', { class: 'notice small below-outdated' }, t('nodes.below_outdated', { n: g.outdated, minutes: OUTDATED_MINUTES })) : null,
      el('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-labelledby': headingId },
        el('table', { class: 'table below-table' },
          el('thead', {}, el('tr', {}, ...head.map((k) => el('th', {}, t(k))))), el('tbody', {}, ...rows)))].filter(Boolean));
  });
  return section;
}

// Why an answer is not a list: the request's error, or (an answer of another shape) that the node
// could not be read.
function failure(answer) {
  return (answer.status === 'rejected' && answer.reason && answer.reason.message) || t('common.unreachable');
}

export async function render(main) {
  clear(main);
  main.append(el('h1', { 'data-i18n': 'page.nodes' }, t('page.nodes')));
  // The alarm: a live region in the page from the start, filled only when the count of broken chains
  // changes, so a reload after a revocation does not read it out again.
  const alarm = el('div', { class: 'chain-alarm', id: 'chain-alarm', role: 'alert', hidden: true });
  let alarmed = 0;
  const setAlarm = (n) => {
    if (n === alarmed) return;
    alarmed = n;
    clear(alarm);
    alarm.hidden = n === 0;
    if (n === 0) return;
    const link = el('a', { href: `#${CHAINS_ID}` }, t('nodes.chains_alarm_link'));
    link.addEventListener('click', (event) => {
      // Scrolled here rather than followed: a new fragment would send the router round again.
      event.preventDefault();
      chainsSection.scrollIntoView({ block: 'start' });
      chainsTitle.focus({ preventScroll: true });
    });
    alarm.append(el('p', {}, el('span', { class: 'chain-alarm-text' }, t(alarmKey(n), { n })), ' ', link));
  };

  const list = el('section', { class: 'card' });
  const belowSlot = el('div');
  const chainsTitle = el('h2', { id: `${CHAINS_ID}-title`, tabindex: -1, 'data-i18n': 'nodes.chains_title' }, t('nodes.chains_title'));
  const chainsBody = el('div');
  const chainsSection = el('section', { class: 'card chains', id: CHAINS_ID, 'aria-labelledby': `${CHAINS_ID}-title` },
    chainsTitle, el('p', { class: 'muted small', 'data-i18n': 'nodes.chains_help' }, t('nodes.chains_help')), chainsBody);

  const reload = async () => {
    clear(list);
    clear(belowSlot);
    clear(chainsBody);
    // Both lists at once; the chains failing (an older node) leaves the nodes list as it was.
    const [nodesAnswer, chainsAnswer] = await Promise.allSettled([getJson('/api/v1/nodes'), getJson('/api/v1/sync/chains')]);
    const nodes = nodesAnswer.status === 'fulfilled' && Array.isArray(nodesAnswer.value.nodes) ? nodesAnswer.value.nodes : null;
    const chains = chainsAnswer.status === 'fulfilled' && Array.isArray(chainsAnswer.value.chains) ? chainsAnswer.value.chains : null;
    const byId = new Map((nodes || []).map((n) => [n.node_id, n]));
    // Every chain checked here when that list came, else those of the nodes enrolled here.
    setAlarm(chains ? countBroken(chains) : countBroken(nodes || [], (n) => n.chain));

    if (!nodes) {
      list.append(errorBox(failure(nodesAnswer), reload));
    } else if (nodes.length === 0) {
      list.append(el('p', { class: 'muted' }, t('nodes.none')));
    } else {
      // The audit chain beside the name, so a phone sees it without scrolling the table.
      const head = ['nodes.name', 'nodes.chain', 'nodes.area_name', 'nodes.state', 'nodes.last_seen', 'nodes.pending', 'nodes.version', 'nodes.error', 'users.actions']
        .map((k) => el('th', {}, t(k)));
      const rows = brokenFirst(nodes, (n) => n.chain).map((n) => {
        const state = linkBadge(n);
        const actions = el('td');
        if (!n.revoked) {
          const revoke = el('button', { type: 'button', class: 'secondary small danger' }, t('nodes.revoke'));
          revoke.addEventListener('click', async () => {
            if (!confirm(`${t('nodes.revoke')} ${n.name}?`)) return;
            try { await del(`/api/v1/nodes/${encodeURIComponent(n.node_id)}`); await reload(); } catch (e) { alert(e.message); }
          });
          actions.append(revoke);
        }
        const broken = n.chain && n.chain.intact === false;
        return el('tr', { 'data-node': n.node_id, 'data-link-state': linkBadgeSpec(n).state, class: broken ? 'chain-broken' : null }, el('td', {}, n.name),
          el('td', { class: 'chain' }, chainNode(n.chain)), el('td', { title: n.area }, n.area_name || n.area), el('td', {}, state),
          el('td', {}, formatTime(n.last_seen_ms)), el('td', {}, String(n.pending_out)), el('td', {}, n.version || '—'),
          el('td', { class: 'wrap' }, n.last_error || '—'), actions);
      });
      list.append(el('div', { class: 'scroll' }, el('table', { class: 'table', id: 'nodes-table' }, el('thead', {}, el('tr', {}, ...head)), el('tbody', {}, ...rows))));
    }

    // Only where there are children: the nodes below are theirs to report.
    if (nodes && nodes.length > 0) belowSlot.append(belowSection(nodesAnswer.value, nodeNow()));

    if (!chains) {
      chainsBody.append(errorBox(failure(chainsAnswer), reload));
    } else if (chains.length === 0) {
      chainsBody.append(el('p', { class: 'muted', id: 'chains-none' }, t('nodes.chains_none')));
    } else {
      chainsBody.append(chainsTable(chains, byId));
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
  main.append(alarm, list, belowSlot, chainsSection, markRequired(form));
  await reload();
}
