// The sensors list: the stations this user's area can see, this node's own and those of the nodes
// below, one group per owning node. This node's stations are kept live from its event stream; the
// stream carries nothing from below, so those are read again every 30 s while the page is shown.
// Filters (scope, node, status) stand in the address so a reload or a shared link shows the same.
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, field, foldable } from '../dom.js';
import { startView } from '../view.js';
import { liveStream } from '../live-stream.js';
import { ago, formatTime, nodeNow, syncClock } from '../format.js';
import { TICK_MS, statusBadge, driverLabel, metricLabel, valueNodes, nodeName, viaText, rememberListQuery } from './sensors-common.js';
import {
  LOCAL, readFilter, filterQuery, groupStations, groupOpen, nodesOf, sameMetrics, mergeTree, isTree, statusCounts,
} from '../sensors-logic.js';

// As often as the brief for the cockpit asks: stations below report minute aggregates, so faster
// would mostly fetch the same list again over a slow link.
const TREE_POLL_MS = 30e3;

// The newest reading per device and metric in a batch; older ones would only be overwritten.
function newestByMetric(readings) {
  const newest = new Map();
  for (const r of readings) {
    const key = `${r.device}\u0000${r.metric}`;
    const seen = newest.get(key);
    if (!seen || r.time_ms >= seen.time_ms) newest.set(key, r);
  }
  return [...newest.values()];
}

function metaText(device) {
  return `${device.area_name || device.area} · ${driverLabel(device.driver)} · ${t('sensors.last_seen')} `;
}

// One station card; keeps its own elements so live updates and refreshes touch only what changed.
function stationCard(initial) {
  let device = initial;
  const tree = isTree(device);
  const href = `/sensors/${encodeURIComponent(device.id)}`;
  const badgeSlot = el('span', { class: 'status-slot' }, statusBadge(device.status, { tree }));
  const name = el('strong', { class: 'station-name' }, device.name);
  const seen = el('span', { class: 'seen' }, ago(device.last_seen));
  const meta = el('span', {}, metaText(device));
  const metrics = new Map();
  const list = el('ul', { class: 'metrics' });
  for (const point of device.points) {
    const value = el('span', { class: 'metric-value' }, ...valueNodes(point.latest, point.unit));
    const item = el('li', { 'data-metric': point.metric, 'data-t': point.latest ? point.latest.t : null },
      el('a', { href: `${href}?metric=${encodeURIComponent(point.metric)}`, 'data-link': true, class: 'metric-link' },
        el('span', {}, ...metricLabel(point)), value));
    metrics.set(point.metric, { point, item, value });
    list.append(item);
  }
  if (device.points.length === 0) list.append(el('li', { class: 'muted small metric-link' }, t('sensors.no_value')));
  const root = el('li', { class: 'station card', 'data-device': device.id, 'data-status': device.status, 'data-origin': tree ? device.origin : null },
    el('a', { href, 'data-link': true, class: 'station-head' }, name, badgeSlot),
    el('p', { class: 'station-meta muted small' }, meta, seen),
    list);

  const showPoint = (m) => {
    m.value.replaceChildren(...valueNodes(m.point.latest, m.point.unit).filter(Boolean));
    if (m.point.latest) m.item.dataset.t = String(m.point.latest.t);
    else delete m.item.dataset.t;
  };
  return {
    root,
    get device() { return device; },
    // A fresh copy of the same station with the same metrics (the caller checks): new values in place.
    refresh(fresh) {
      device = fresh;
      name.textContent = fresh.name;
      meta.textContent = metaText(fresh);
      for (const point of fresh.points) {
        const m = metrics.get(point.metric);
        if (!m) continue;
        m.point = point;
        showPoint(m);
      }
      root.dataset.status = fresh.status;
      badgeSlot.replaceChildren(statusBadge(fresh.status, { tree }));
      seen.textContent = ago(fresh.last_seen);
    },
    reading(r) {
      const m = metrics.get(r.metric);
      if (!m) return false;
      // History uploads (HJ 212 back-fill) can arrive after newer values; they belong in charts only.
      if (m.point.latest && r.time_ms < m.point.latest.t) return true;
      m.point.latest = { t: r.time_ms, value: r.value, unit: r.unit, quality: r.quality };
      showPoint(m);
      return true;
    },
    seenNow() {
      // last_seen is when the node received something, by its clock; the event's time_ms is the device's.
      device.last_seen = nodeNow();
      seen.textContent = ago(device.last_seen);
    },
    status(s) {
      device.status = s.status;
      if (s.last_seen !== undefined && s.last_seen !== null) device.last_seen = s.last_seen;
      root.dataset.status = s.status;
      badgeSlot.replaceChildren(statusBadge(s.status, { tree }));
      seen.textContent = ago(device.last_seen);
    },
    tick() {
      seen.textContent = ago(device.last_seen);
    },
  };
}

const LEVELS = ['blue', 'yellow', 'orange', 'red'];

// Stations whose rules stand at a warning level are marked with it (the level's name, not only its
// colour). The rules are a second request; if it fails the list is still the list. Rules watch this
// node's own devices only, so only those cards can be marked.
async function markWarnings(cards) {
  let rules;
  try {
    rules = (await getJson('/api/v1/rules', { timeoutMs: 8000 })).rules;
  } catch (_) {
    return;
  }
  const worst = new Map();
  for (const r of rules) {
    if (!r.device || !LEVELS.includes(r.state)) continue;
    if (!worst.has(r.device) || LEVELS.indexOf(r.state) > LEVELS.indexOf(worst.get(r.device))) worst.set(r.device, r.state);
  }
  for (const card of cards.values()) card.root.querySelector('.warning-badge')?.remove();
  for (const [device, level] of worst) {
    const card = cards.get(device);
    if (!card || isTree(card.device)) continue;
    card.root.querySelector('.station-head').append(
      el('span', { class: `warning-badge level-${level}` }, `${t(`level.${level}`)}${t('warnings.banner')}`));
  }
}

// A part of the view that can be stopped on its own (the live stream, which only makes sense while
// this node's stations are shown) and is stopped with the view in any case.
function subView(parent) {
  const cleanups = [];
  const sub = {
    alive: true,
    add(fn) { cleanups.push(fn); },
    listen(target, type, fn) {
      target.addEventListener(type, fn);
      sub.add(() => target.removeEventListener(type, fn));
    },
    stop() {
      sub.alive = false;
      for (const fn of cleanups.splice(0)) {
        try { fn(); } catch (_) { /* release the rest */ }
      }
    },
  };
  parent.add(() => sub.stop());
  return sub;
}

const sameChildren = (parent, nodes) => parent.children.length === nodes.length && nodes.every((n, i) => parent.children[i] === n);

// One node's group: a fold with the node's name and counts, kept across refreshes so what the person
// opened or closed stays so and a refresh does not move the page under their finger.
function groupBox(key, openState) {
  const nameSlot = el('span', { class: 'group-name' });
  const viaSlot = el('span', { class: 'group-via muted small', hidden: true });
  const counts = el('span', { class: 'group-counts muted small' });
  const stations = el('ul', { class: 'station-list' });
  const details = el('details', { class: 'station-group-box' }, el('summary', {}, nameSlot, viaSlot, counts), stations);
  const root = el('li', { class: 'station-group', 'data-node': key }, details);
  let wanted = null;
  // Set by the page or by the person: only theirs is remembered, and it wins over the default.
  details.addEventListener('toggle', () => {
    if (details.open !== wanted) {
      wanted = details.open;
      openState.set(key, details.open);
    }
  });
  return {
    root,
    update(group, open, cardOf) {
      nameSlot.textContent = nodeName(group.name, { local: group.local, origin: group.origin });
      // A village's stations came through its township: two villages of the same name in different
      // townships are told apart by it.
      viaSlot.hidden = !group.via;
      viaSlot.textContent = viaText(group.via) || '';
      if (group.via) viaSlot.title = group.via.id;
      else viaSlot.removeAttribute('title');
      const n = group.counts.total;
      const parts = [t(n === 1 ? 'sensors.group_stations_one' : 'sensors.group_stations', { n })];
      if (group.counts.problems) parts.push(t('sensors.group_problems', { n: group.counts.problems }));
      counts.textContent = parts.join(' · ');
      root.dataset.problems = String(group.counts.problems);
      wanted = open;
      if (details.open !== open) details.open = open;
      const roots = group.stations.map((d) => cardOf(d.id).root);
      if (!sameChildren(stations, roots)) stations.replaceChildren(...roots);
    },
  };
}

// Not async for the router: the heading and the menu highlight appear at once, and the station data
// follows when it arrives, instead of the whole navigation waiting on a slow link.
export function renderList(main) {
  const view = startView();
  clear(main);
  const filter = readFilter(new URLSearchParams(location.search));
  rememberListQuery(filterQuery(filter));
  const live = el('p', { class: 'live-state small', id: 'sensors-live', 'aria-live': 'polite' });
  const polled = el('p', { class: 'muted small', id: 'sensors-refresh', hidden: true });
  const summary = el('p', { class: 'muted small', id: 'sensors-summary' });
  const problem = el('div');
  const list = el('ul', { class: 'station-groups', id: 'station-list' });

  const scope = el('select', { id: 's-scope' }, ...['all', 'local', 'tree'].map((s) =>
    el('option', { value: s, selected: s === filter.scope }, t(`sensors.scope.${s}`))));
  const node = el('select', { id: 's-node' }, el('option', { value: '' }, t('sensors.any_node')));
  const status = el('select', { id: 's-status' },
    el('option', { value: '' }, t('sensors.any_status')),
    el('option', { value: 'problem', selected: filter.status === 'problem' }, t('sensors.only_problems')));
  const scopeField = field(el('label', { for: 's-scope', 'data-i18n': 'sensors.scope' }, t('sensors.scope')), scope);
  const nodeField = field(el('label', { for: 's-node', 'data-i18n': 'sensors.node' }, t('sensors.node')), node);
  const form = el('form', { class: 'card form filters', id: 'sensors-filters' }, scopeField, nodeField,
    field(el('label', { for: 's-status', 'data-i18n': 'sensors.status_filter' }, t('sensors.status_filter')), status));
  form.addEventListener('submit', (e) => e.preventDefault());

  main.append(el('div', { class: 'page-head' }, el('h1', { 'data-i18n': 'page.sensors' }, t('page.sensors')), live),
    foldable(form, { id: 'sensors-filters-box' }), polled, summary, problem, list,
    el('p', { class: 'loading', id: 'sensors-loading' }, t('common.loading')));

  let devices = [];
  let cards = new Map();
  const groups = new Map();
  const openState = new Map();
  // Whether any station below has been seen: a village without nodes under it is not polled for none,
  // and is not offered filters that could only show its own stations.
  let hasTree = filter.scope === 'tree';
  let treeAt = null;
  let treeFailed = false;

  const showPolled = () => {
    polled.hidden = !hasTree || filter.scope === 'local' || treeAt === null;
    if (polled.hidden) return;
    const time = formatTime(treeAt, { date: false, seconds: true });
    polled.textContent = t(treeFailed ? 'sensors.tree_refresh_failed' : 'sensors.tree_refresh', { time });
    polled.dataset.state = treeFailed ? 'failed' : 'ok';
  };

  let nodeKeys = '';
  const showFilters = () => {
    const nodes = nodesOf(devices);
    const keys = nodes.map((n) => `${n.key}\u0000${n.name}\u0000${viaText(n.via)}`).join('\u0001');
    // Rebuilt only when the nodes change, so a refresh never closes the list a person has open.
    if (keys !== nodeKeys) {
      nodeKeys = keys;
      const options = nodes.map((n) => el('option', { value: n.key },
        [nodeName(n.name, { local: n.local, origin: n.origin }), viaText(n.via)].filter(Boolean).join(' · ')));
      // A node picked in a link but not in the list (gone, or not loaded yet) stays picked, by its id.
      if (filter.node && !nodes.some((n) => n.key === filter.node)) options.push(el('option', { value: filter.node }, filter.node.slice(0, 8)));
      node.replaceChildren(el('option', { value: '' }, t('sensors.any_node')), ...options);
      node.value = filter.node;
    }
    const offered = hasTree || filter.scope !== 'all' || Boolean(filter.node);
    scopeField.hidden = !offered;
    nodeField.hidden = !offered || filter.scope === 'local';
  };

  const render = () => {
    const shown = groupStations(devices, filter);
    const total = shown.reduce((n, g) => n + g.stations.length, 0);
    const counts = statusCounts(shown.flatMap((g) => g.stations));
    const filtered = total !== devices.length;
    summary.textContent = devices.length === 0 ? ''
      : t(filtered ? 'sensors.summary_filtered' : 'sensors.summary', { n: total, total: devices.length, problems: counts.problems });
    if (devices.length === 0) {
      groups.clear();
      list.replaceChildren(el('li', { class: 'muted', id: 'sensors-empty' }, t('sensors.none')));
      return;
    }
    if (shown.length === 0) {
      groups.clear();
      list.replaceChildren(el('li', { class: 'muted', id: 'sensors-no-match' }, t('sensors.no_match')));
      return;
    }
    const boxes = shown.map((g) => {
      let box = groups.get(g.key);
      if (!box) {
        box = groupBox(g.key, openState);
        groups.set(g.key, box);
      }
      const open = openState.has(g.key) ? openState.get(g.key) : groupOpen(g, total, filter);
      box.update(g, open, (id) => cards.get(id));
      return box;
    });
    for (const key of [...groups.keys()]) if (!shown.some((g) => g.key === key)) groups.delete(key);
    const roots = boxes.map((b) => b.root);
    if (!sameChildren(list, roots)) list.replaceChildren(...roots);
  };

  const take = (fresh) => {
    const next = new Map();
    for (const d of fresh) {
      const old = cards.get(d.id);
      if (old && sameMetrics(old.device, d)) {
        if (old.device !== d) old.refresh(d);
        next.set(d.id, old);
      } else {
        next.set(d.id, stationCard(d));
      }
    }
    cards = next;
    devices = fresh;
  };

  // Reads come together (lagged events, reconnects, tab switches, the poll); one request answers
  // them, plus one more if asked meanwhile, since its answer may predate what was missed. A full read
  // follows the filter's scope; a tree read refreshes only the stations below. `generation` drops an
  // answer for a scope that is no longer chosen.
  let inflight = null;
  let queued = null;
  let generation = 0;
  const request = (kind) => {
    if (inflight) {
      queued = queued === 'full' || kind === 'full' ? 'full' : 'tree';
      return inflight;
    }
    inflight = (async () => {
      const mine = generation;
      const treeOnly = kind === 'tree' || filter.scope === 'tree';
      const asked = kind === 'tree' ? 'tree' : filter.scope;
      try {
        const data = await getJson(asked === 'all' ? '/api/v1/sensors' : `/api/v1/sensors?scope=${asked}`);
        if (!view.alive || mine !== generation) return;
        syncClock(data.now);
        const fresh = Array.isArray(data.devices) ? data.devices : [];
        take(kind === 'tree' && filter.scope === 'all' ? mergeTree(devices, fresh) : fresh);
        if (fresh.some(isTree)) hasTree = true;
        if (treeOnly || filter.scope === 'all') {
          treeAt = nodeNow();
          treeFailed = false;
        }
        problem.replaceChildren();
        showFilters();
        render();
        if (kind === 'full') markWarnings(cards);
      } catch (e) {
        if (!view.alive || mine !== generation) return;
        if (kind === 'tree' && devices.length) {
          // The list stays as it was; the line under the heading says it is not being refreshed.
          treeFailed = true;
        } else {
          problem.replaceChildren(errorBox(e.message || t('common.unreachable'), () => request('full')));
        }
      } finally {
        inflight = null;
        main.querySelector('#sensors-loading')?.remove();
        showPolled();
      }
      if (queued && view.alive) {
        const next = queued;
        queued = null;
        await request(next);
      }
    })();
    return inflight;
  };

  let stream = null;
  let unknownMetricReload = 0;
  const follow = () => {
    stream?.stop();
    stream = null;
    delete live.dataset.state;
    live.textContent = '';
    // The stream carries this node's own stations only.
    if (filter.scope === 'tree') return;
    stream = subView(view);
    liveStream(stream, live, {
      onReadings(readings) {
        const touched = new Set();
        let unknownMetric = false;
        for (const r of newestByMetric(readings)) {
          const card = cards.get(r.device);
          if (!card || isTree(card.device)) continue;
          touched.add(card);
          if (!card.reading(r)) unknownMetric = true;
        }
        for (const card of touched) card.seenNow();
        // A metric the list has not seen yet (a device started sending something new): the node knows
        // its name and unit, so reload rather than guess, but not more than once a minute.
        if (unknownMetric && Date.now() - unknownMetricReload > 60e3) {
          unknownMetricReload = Date.now();
          request('full');
        }
      },
      onStatus(s) {
        const card = cards.get(s.device);
        if (card && !isTree(card.device)) card.status(s);
      },
      reload: () => request('full'),
    });
  };

  const changed = () => {
    const query = filterQuery(filter);
    rememberListQuery(query);
    // replaceState: the back button is for pages, not for every filter tried.
    history.replaceState({}, '', `/sensors${query}`);
  };
  scope.addEventListener('change', () => {
    filter.scope = scope.value;
    // A node the new scope cannot show would leave an empty list behind a hidden field.
    if ((filter.scope === 'local' && filter.node !== LOCAL) || (filter.scope === 'tree' && filter.node === LOCAL)) {
      filter.node = '';
      node.value = '';
    }
    changed();
    generation += 1;
    queued = null;
    follow();
    showFilters();
    showPolled();
    request('full');
  });
  node.addEventListener('change', () => {
    filter.node = node.value;
    changed();
    render();
  });
  status.addEventListener('change', () => {
    filter.status = status.value;
    changed();
    render();
  });

  request('full').then(() => {
    if (view.alive) follow();
  });
  view.every(TICK_MS, () => { for (const card of cards.values()) card.tick(); });
  view.every(TREE_POLL_MS, () => {
    if (!document.hidden && hasTree && filter.scope !== 'local') request('tree');
  });
  // With the stream on, coming back to the page reloads through it (live-stream.js); without it
  // (stations below only), here.
  view.listen(document, 'visibilitychange', () => {
    if (!document.hidden && !stream) request('full');
  });
}
