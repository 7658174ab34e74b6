// The county overview (数字驾驶舱, /county) for the node-wide roles: on one screen the link health of
// the whole tree, incidents by township over the last 30 days with every one overdue now, the stations in trouble
// and the standing warnings. Each section loads on its own, so a refusal (403) or a failure in one
// leaves the others readable; everything is read again every 30 s while the page is shown. Cards stack
// on a phone and sit in a grid on a staff PC; no charts library, only text, tables and counts.
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear } from '../dom.js';
import { startView } from '../view.js';
import { ago, formatTime, nodeNow, syncClock } from '../format.js';
import { loadAreas, areaNode } from '../names.js';
import { chainSummary, shortId } from '../chains-logic.js';
import { isTree, viaOf } from '../sensors-logic.js';
import { statusBadge, nodeName, viaText } from './sensors-common.js';
import {
  REFRESH_MS, INCIDENT_DAYS, ROW_LIMIT, REPORT_OUTDATED_MS, linkState, linkBadgeSpec, chainBroken, treeNodes, worstFirst,
  linkCounts, viaName, periodFrom,
  incidentRows, incidentTotals, withOverdueNow, percent, stationCounts, troubledStations, activeWarnings, warningSince, levelCounts,
  LEVELS, failureKind,
} from '../cockpit-logic.js';

// A row of counts, each a number over its label; `alert` marks the counts that are bad when above 0
// (by a red edge and bold, the number and its words still saying it).
function counts(items, id) {
  return el('ul', { class: 'cockpit-counts', id },
    ...items.map(({ key, n, alert = false, kind }) => el('li', { class: `cockpit-count${alert && n > 0 ? ' alert' : ''}`, 'data-kind': kind },
      el('strong', {}, String(n)), el('span', { class: 'small' }, t(key)))));
}

// A table in a scroller that is itself a named stop for the keyboard (it has nothing else to focus).
function table(label, head, rows, id) {
  return el('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': label },
    el('table', { class: 'table cockpit-table', id },
      el('thead', {}, el('tr', {}, ...head.map((k) => el('th', { scope: 'col' }, t(k))))),
      el('tbody', {}, ...rows)));
}

// "Show all N" under a list cut at ROW_LIMIT; the worst rows are the ones already shown.
function moreButton(total, expanded, onToggle) {
  if (total <= ROW_LIMIT) return null;
  const button = el('button', { type: 'button', class: 'secondary small cockpit-more', 'aria-expanded': String(expanded) },
    expanded ? t('cockpit.show_fewer') : t('cockpit.show_all', { n: total }));
  button.addEventListener('click', onToggle);
  return button;
}

function linkBadge(n) {
  const b = linkBadgeSpec(n);
  return el('span', { class: `badge${b.tone ? ` ${b.tone}` : ''}`, 'data-link-state': b.state, title: b.reason }, t(b.key));
}

const OUTDATED_MINUTES = Math.round(REPORT_OUTDATED_MS / 60e3);

// Under a node below: how old its parent's report is, marked when too old to be current, and that the
// child it came through is not connected. A report that does not say when it was made (an older
// parent) shows, as before, only when it arrived, and only when its child is down.
function reportLines(n) {
  if (n.level !== 'below') return [];
  const viaDown = n.stale ? el('span', { class: 'muted small cockpit-sub', title: t('cockpit.stale_help') }, t('cockpit.via_offline')) : null;
  if (!n.report) {
    return [n.stale ? el('span', { class: 'muted small cockpit-sub', title: t('cockpit.stale_help') }, t('cockpit.stale', { time: formatTime(n.reported_ms) })) : null];
  }
  return [
    el('span', { class: `small cockpit-sub report-age${n.outdated ? ' outdated' : ' muted'}`, title: formatTime(n.report.at), 'data-outdated': n.outdated ? '' : null },
      t('nodes.report_age', { age: ago(n.report.at) }),
      n.outdated ? ' · ' : null,
      n.outdated ? el('span', { class: 'report-outdated', title: t('nodes.report_outdated_help', { minutes: OUTDATED_MINUTES }) }, t('nodes.report_outdated')) : null),
    viaDown,
  ];
}

// ---- The sections: each a title, a line for a refresh that failed, and a body ----

// What a person is at inside a section: the link or control focused, and how far its tables are
// scrolled sideways; a refresh every 30 s must not throw them back to the start.
function placeOf(node) {
  if (node.matches('a[href]')) return `a:${node.getAttribute('href')}`;
  if (node.classList.contains('cockpit-more')) return 'more';
  if (node.classList.contains('scroll')) return 'scroll';
  return null;
}
function redraw(body, nodes) {
  const active = document.activeElement;
  const place = active && active !== body && body.contains(active) ? placeOf(active) : null;
  const scrolled = [...body.querySelectorAll('.scroll')].map((s) => s.scrollLeft);
  body.replaceChildren(...nodes);
  body.querySelectorAll('.scroll').forEach((s, i) => { if (scrolled[i]) s.scrollLeft = scrolled[i]; });
  if (place) {
    const again = [...body.querySelectorAll('a[href], .cockpit-more, .scroll')].find((e) => placeOf(e) === place);
    again?.focus({ preventScroll: true });
  }
}

function section(id, titleKey, { wide = false } = {}) {
  const title = el('h2', { id: `${id}-title`, 'data-i18n': titleKey }, t(titleKey));
  const status = el('div', { class: 'cockpit-status' });
  const body = el('div', { class: 'cockpit-body' }, el('p', { class: 'loading' }, t('common.loading')));
  const root = el('section', { class: `card cockpit-section${wide ? ' wide' : ''}`, id, 'aria-labelledby': `${id}-title`, 'aria-busy': 'true' },
    title, status, body);
  return { root, status, body };
}

// Runs one section's read and drawing. A 403 says "无权限查看" once and is not asked again; a failure
// before anything was shown puts the node's reason and a retry in the body; a failure later keeps
// what was shown and says since when, with a retry. `key` gives what of an answer shows on screen.
function sectionRunner(view, sec, read, draw, key = JSON.stringify) {
  let inflight = null;
  let shownAt = null;
  let forbidden = false;
  let drawn = null;
  const run = () => {
    if (forbidden) return Promise.resolve();
    if (inflight) return inflight;
    inflight = (async () => {
      try {
        const data = await read();
        if (!view.alive) return;
        // An answer that would look like the last one is not drawn again (nothing would change but the
        // reader's place).
        const same = key(data);
        if (same !== drawn || sec.root.dataset.state !== 'ok') redraw(sec.body, draw(data).filter(Boolean));
        drawn = same;
        sec.status.replaceChildren();
        shownAt = Date.now();
        sec.root.dataset.state = 'ok';
      } catch (e) {
        if (!view.alive) return;
        if (failureKind(e) === 'forbidden') {
          forbidden = true;
          sec.status.replaceChildren();
          sec.body.replaceChildren(el('p', { class: 'muted cockpit-forbidden' }, t('cockpit.forbidden')));
          sec.root.dataset.state = 'forbidden';
          return;
        }
        const retry = el('button', { type: 'button', class: 'secondary small', 'data-i18n': 'common.retry' }, t('common.retry'));
        retry.addEventListener('click', () => run());
        const reason = e && e.message ? e.message : t('common.unreachable');
        const box = el('div', { class: 'cockpit-failed', role: 'alert' },
          el('p', { class: 'error small' }, shownAt === null ? reason
            : t('cockpit.refresh_failed', { time: formatTime(shownAt, { date: false, seconds: true }), reason })), retry);
        if (shownAt === null) sec.body.replaceChildren(box);
        else sec.status.replaceChildren(box);
        sec.root.dataset.state = 'failed';
      } finally {
        inflight = null;
        sec.root.removeAttribute('aria-busy');
      }
    })();
    return inflight;
  };
  return run;
}

// ---- (1) Nodes: the link health of the whole tree ----

function nodesSection(view) {
  const sec = section('cockpit-nodes', 'cockpit.nodes_title', { wide: true });
  let expanded = false;
  let last = null;
  // The answer with this node's clock as it was read: whether a report is out of date depends on it.
  const read = async () => ({ data: await getJson('/api/v1/nodes'), now: nodeNow() });
  // Drawn again when the answer changes or a report's age as shown does, not on every read.
  const shown = ({ data, now }) => JSON.stringify([data, treeNodes(data, now).map((n) => (n.report ? [ago(n.report.at), n.outdated] : null))]);
  const draw = ({ data, now }) => {
    last = { data, now };
    const all = treeNodes(data, now);
    if (all.length === 0) return [el('p', { class: 'muted', id: 'cockpit-nodes-none' }, t('nodes.none'))];
    const c = linkCounts(all);
    const items = [
      { key: 'cockpit.connected', n: c.connected, kind: 'connected' },
      { key: 'cockpit.offline', n: c.offline, alert: true, kind: 'offline' },
      { key: 'cockpit.refused', n: c.refused, alert: true, kind: 'refused' },
      { key: 'cockpit.chain_broken', n: c.chain_broken, alert: true, kind: 'chain_broken' },
    ];
    // Only nodes too old to say their state are guessed as failing; in a tree that says, no tile.
    if (c.error) items.splice(3, 0, { key: 'cockpit.link_error', n: c.error, alert: true, kind: 'error' });
    if (c.revoked) items.push({ key: 'cockpit.revoked', n: c.revoked, kind: 'revoked' });
    const children = new Map((data.nodes || []).map((n) => [n.node_id, n]));
    const sorted = worstFirst(all);
    const rows = (expanded ? sorted : sorted.slice(0, ROW_LIMIT)).map((n) => {
      const where = n.level === 'below' ? t('cockpit.via', { name: viaName(n, children) || shortId(n.via) }) : t('cockpit.direct');
      const chain = chainSummary(n.chain);
      return el('tr', { 'data-node': n.node_id, 'data-link-state': linkState(n), class: chainBroken(n) ? 'chain-broken' : null },
        el('td', { title: n.node_id }, el('span', { class: 'cockpit-node-name' }, n.name || shortId(n.node_id)),
          el('span', { class: 'muted small cockpit-sub' }, [n.area_name === n.name ? null : n.area_name || n.area, where].filter(Boolean).join(' · '))),
        el('td', {}, linkBadge(n), ...reportLines(n),
          n.last_error && linkState(n) !== 'connected' ? el('span', { class: 'small cockpit-sub cockpit-error' }, n.last_error) : null),
        el('td', {}, formatTime(n.last_seen_ms)),
        el('td', {}, `${n.pending_out ?? 0} / ${n.pending_in ?? 0}`),
        el('td', {}, n.version || '—'),
        el('td', {}, chain.state === 'broken' ? el('span', { class: 'badge chain-bad' }, t(chain.key, chain.params))
          : chain.state === 'intact' ? el('span', { class: 'chain-ok' }, t('nodes.chain_intact_short'))
            : el('span', { class: 'chain-none' }, t('nodes.chain_none'))));
    });
    const more = moreButton(sorted.length, expanded, () => {
      expanded = !expanded;
      sec.body.replaceChildren(...draw(last).filter(Boolean));
      sec.body.querySelector('.cockpit-more')?.focus();
    });
    return [
      counts(items, 'cockpit-node-counts'),
      c.stale ? el('p', { class: 'notice small' }, t('cockpit.stale_note', { n: c.stale })) : null,
      c.outdated ? el('p', { class: 'notice small', id: 'cockpit-outdated-note' }, t('cockpit.outdated_note', { n: c.outdated, minutes: OUTDATED_MINUTES })) : null,
      table(t('cockpit.nodes_title'), ['cockpit.node', 'nodes.state', 'nodes.last_seen', 'nodes.pending_io', 'nodes.version', 'nodes.chain'], rows, 'cockpit-nodes-table'),
      el('p', { class: 'cockpit-foot' }, more, el('a', { href: '/nodes', 'data-link': true, class: 'cockpit-link' }, t('cockpit.to_nodes'))),
    ];
  };
  return { sec, run: sectionRunner(view, sec, read, draw, shown) };
}

// ---- (2) Incidents and overdue by township ----

function incidentsSection(view) {
  const sec = section('cockpit-incidents', 'cockpit.incidents_title');
  const read = async () => {
    // The node's clock (as the sensors answer set it), so "30 days" is the node's 30 days.
    const from = periodFrom(nodeNow(), INCIDENT_DAYS);
    // Overdue counts every open incident past its deadline, however old: a second answer from the start.
    const [data, allTime, dir] = await Promise.all([
      getJson(`/api/v1/indicators?from=${from}`), getJson('/api/v1/indicators?from=0'), loadAreas()]);
    return { data, allTime, dir };
  };
  const draw = ({ data, allTime, dir }) => {
    const { rows, totals: total } = withOverdueNow(incidentRows(data), incidentTotals(data), allTime);
    const period = el('p', { class: 'muted small', id: 'cockpit-period' },
      t('cockpit.incidents_period', { days: INCIDENT_DAYS, from: formatTime(data.from_ms).slice(0, 10) }));
    const tiles = counts([
      { key: 'indicators.reported', n: total.reported, kind: 'reported' },
      { key: 'indicators.closed', n: total.closed, kind: 'closed' },
      { key: 'cockpit.overdue', n: total.overdue, alert: true, kind: 'overdue' },
    ], 'cockpit-incident-counts');
    const rate = el('p', { class: 'small' }, `${t('indicators.on_time')}: `, el('strong', {}, percent(total.on_time_rate)));
    if (rows.length === 0) return [period, tiles, el('p', { class: 'muted' }, t('incident.none'))];
    const body = rows.map((r) => {
      const name = areaNode(dir, r.area);
      const label = r.own ? el('span', {}, name, el('span', { class: 'muted small own-area' }, t('cockpit.own_area'))) : name;
      const overdue = r.overdue > 0
        ? el('a', { href: `/incidents?area=${encodeURIComponent(r.area)}&overdue=true`, 'data-link': true, class: 'late-text', title: t('cockpit.overdue_link') }, String(r.overdue))
        : '0';
      return el('tr', { 'data-area': r.area, class: r.overdue > 0 ? 'has-overdue' : null },
        el('th', { scope: 'row' }, label), el('td', {}, String(r.reported)), el('td', {}, String(r.closed)),
        el('td', {}, overdue), el('td', {}, percent(r.on_time_rate)));
    });
    return [period, tiles, rate,
      table(t('cockpit.incidents_title'), ['indicators.area', 'indicators.reported', 'indicators.closed', 'cockpit.overdue', 'indicators.on_time'], body, 'cockpit-incidents-table'),
      el('p', { class: 'cockpit-foot' }, el('a', { href: '/indicators', 'data-link': true, class: 'cockpit-link' }, t('cockpit.to_indicators')))];
  };
  return { sec, run: sectionRunner(view, sec, read, draw) };
}

// ---- (3) Stations in trouble ----

function stationsSection(view) {
  const sec = section('cockpit-stations', 'cockpit.stations_title');
  let expanded = false;
  let last = null;
  const read = async () => {
    const data = await getJson('/api/v1/sensors');
    syncClock(data.now);
    return Array.isArray(data.devices) ? data.devices : [];
  };
  const draw = (devices) => {
    last = devices;
    if (devices.length === 0) return [el('p', { class: 'muted' }, t('sensors.none'))];
    const c = stationCounts(devices);
    const tiles = counts([
      { key: 'sensors.status.online', n: c.online, kind: 'online' },
      { key: 'sensors.status.stale', n: c.stale, alert: true, kind: 'stale' },
      { key: 'sensors.status.faulty', n: c.faulty, alert: true, kind: 'faulty' },
      { key: 'sensors.status.unknown', n: c.unknown, alert: true, kind: 'unknown' },
    ], 'cockpit-station-counts');
    const trouble = troubledStations(devices);
    if (trouble.length === 0) return [tiles, el('p', { class: 'muted', id: 'cockpit-stations-ok' }, t('cockpit.stations_ok'))];
    const items = (expanded ? trouble : trouble.slice(0, ROW_LIMIT)).map((d) => {
      const tree = isTree(d);
      return el('li', { class: 'cockpit-item', 'data-device': d.id, 'data-status': d.status },
        el('a', { href: `/sensors/${encodeURIComponent(d.id)}`, 'data-link': true, class: 'cockpit-item-link' },
          el('span', { class: 'cockpit-item-head' }, el('strong', {}, d.name), statusBadge(d.status, { tree })),
          el('span', { class: 'muted small' },
            [nodeName(d.node_name, { local: !tree, origin: d.origin }), viaText(viaOf(d)), d.area_name || d.area,
              `${t('sensors.last_seen')} ${ago(d.last_seen)}`].filter(Boolean).join(' · '))));
    });
    const more = moreButton(trouble.length, expanded, () => {
      expanded = !expanded;
      sec.body.replaceChildren(...draw(last).filter(Boolean));
      sec.body.querySelector('.cockpit-more')?.focus();
    });
    return [tiles, el('ul', { class: 'cockpit-list', id: 'cockpit-stations-list' }, ...items),
      el('p', { class: 'cockpit-foot' }, more,
        el('a', { href: '/sensors?status=problem', 'data-link': true, class: 'cockpit-link' }, t('cockpit.to_stations')))];
  };
  return { sec, run: sectionRunner(view, sec, read, draw) };
}

// ---- (4) Standing warnings ----

function warningsSection(view) {
  const sec = section('cockpit-warnings', 'cockpit.warnings_title');
  const draw = (data) => {
    const active = activeWarnings(data && data.warnings);
    if (active.length === 0) return [el('p', { class: 'muted', id: 'cockpit-warnings-none' }, t('warnings.none'))];
    const c = levelCounts(active);
    const chips = el('p', { class: 'cockpit-levels' }, ...[...LEVELS].reverse().filter((l) => c[l] > 0)
      .map((l) => el('span', { class: `warning-badge level-${l}`, 'data-level': l }, `${t(`level.${l}`)} ${c[l]}`)));
    const items = active.map((w) => el('li', { class: `warning-card level-${w.level || 'none'}`, 'data-warning': w.id },
      el('a', { href: `/warnings/${encodeURIComponent(w.id)}`, 'data-link': true },
        el('strong', { class: 'warning-level' }, [w.level ? t(`level.${w.level}`) : null, t(`wstate.${w.state}`)].filter(Boolean).join(' · ')),
        el('span', { class: 'warning-headline' }, w.headline)),
      el('p', { class: 'muted small' },
        `${w.area_name || w.area} · ${t('cockpit.since', { time: formatTime(warningSince(w)) })}`)));
    return [chips, el('ul', { class: 'warning-list cockpit-warnings', id: 'cockpit-warnings-list' }, ...items),
      el('p', { class: 'cockpit-foot' }, el('a', { href: '/warnings', 'data-link': true, class: 'cockpit-link' }, t('cockpit.to_warnings')))];
  };
  return { sec, run: sectionRunner(view, sec, () => getJson('/api/v1/warnings?state=raised,issued'), draw) };
}

// Not async for the router: the heading, the menu highlight and the four empty cards appear at once,
// and each card fills in when its answer arrives.
export function render(main) {
  const view = startView();
  clear(main);
  const updated = el('p', { class: 'muted small', id: 'cockpit-updated' }, t('cockpit.refresh_every'));
  const grid = el('div', { class: 'cockpit', id: 'cockpit' });
  main.append(el('div', { class: 'page-head' }, el('h1', { 'data-i18n': 'page.cockpit' }, t('page.cockpit'))), updated, grid);

  const sections = [nodesSection(view), incidentsSection(view), stationsSection(view), warningsSection(view)];
  grid.append(...sections.map((s) => s.sec.root));
  let refreshing = null;
  const refresh = () => {
    // All at once: one after another over a slow link would take four times as long, and each section
    // ends on its own anyway.
    refreshing ??= Promise.all(sections.map((s) => s.run()))
      .then(() => {
        if (view.alive) updated.textContent = t('cockpit.updated', { time: formatTime(Date.now(), { date: false, seconds: true }) });
      })
      .finally(() => { refreshing = null; });
    return refreshing;
  };
  view.every(REFRESH_MS, () => { if (!document.hidden) refresh(); });
  view.listen(document, 'visibilitychange', () => { if (!document.hidden) refresh(); });
  refresh().then(() => {
    if (view.alive) grid.dataset.ready = '';
  });
}
