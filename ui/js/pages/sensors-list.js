// The sensors list: the stations this user's area can see, with status and latest values kept live
// from the node's event stream.
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox } from '../dom.js';
import { startView } from '../view.js';
import { liveStream } from '../live-stream.js';
import { ago, nodeNow, syncClock } from '../format.js';
import { TICK_MS, statusBadge, driverLabel, metricLabel, valueNodes } from './sensors-common.js';

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

// One station card; keeps its own elements so live updates touch only what changed.
function stationCard(device) {
  const href = `/sensors/${encodeURIComponent(device.id)}`;
  const badgeSlot = el('span', { class: 'status-slot' }, statusBadge(device.status));
  const seen = el('span', { class: 'seen' }, ago(device.last_seen));
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
  const root = el('li', { class: 'station card', 'data-device': device.id, 'data-status': device.status },
    el('a', { href, 'data-link': true, class: 'station-head' }, el('strong', { class: 'station-name' }, device.name), badgeSlot),
    el('p', { class: 'station-meta muted small' }, `${device.area_name || device.area} · ${driverLabel(device.driver)} · ${t('sensors.last_seen')} `, seen),
    list);

  return {
    root,
    reading(r) {
      const m = metrics.get(r.metric);
      if (!m) return false;
      // History uploads (HJ 212 back-fill) can arrive after newer values; they belong in charts only.
      if (m.point.latest && r.time_ms < m.point.latest.t) return true;
      m.point.latest = { t: r.time_ms, value: r.value, unit: r.unit, quality: r.quality };
      m.value.replaceChildren(...valueNodes(m.point.latest, m.point.unit).filter(Boolean));
      m.item.dataset.t = String(r.time_ms);
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
      badgeSlot.replaceChildren(statusBadge(s.status));
      seen.textContent = ago(device.last_seen);
    },
    tick() {
      seen.textContent = ago(device.last_seen);
    },
  };
}

// Not async for the router: the heading and the menu highlight appear at once, and the station data
// follows when it arrives, instead of the whole navigation waiting on a slow link.
const LEVELS = ['blue', 'yellow', 'orange', 'red'];

// Stations whose rules stand at a warning level are marked with it (the level's name, not only its
// colour). The rules are a second request; if it fails the list is still the list.
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
  for (const [device, level] of worst) {
    const card = cards.get(device);
    if (!card) continue;
    card.root.querySelector('.warning-badge')?.remove();
    card.root.querySelector('.station-head').append(
      el('span', { class: `warning-badge level-${level}` }, `${t(`level.${level}`)}${t('warnings.banner')}`));
  }
}

export function renderList(main) {
  const view = startView();
  clear(main);
  const live = el('p', { class: 'live-state small', id: 'sensors-live', 'aria-live': 'polite' });
  const problem = el('div');
  const list = el('ul', { class: 'station-list', id: 'station-list' });
  main.append(el('div', { class: 'page-head' }, el('h1', { 'data-i18n': 'page.sensors' }, t('page.sensors')), live), problem, list);
  main.append(el('p', { class: 'loading', id: 'sensors-loading' }, t('common.loading')));

  let cards = new Map();
  let loading = null;
  let again = false;
  let unknownMetricReload = 0;
  const load = () => {
    // Lagged events, reconnects and tab switches can ask at once; one request answers them all, plus
    // one more if asked while it was on its way, since its answer may predate what was missed.
    if (loading) {
      again = true;
    } else {
      loading = (async () => {
        try {
          const data = await getJson('/api/v1/sensors');
          if (!view.alive) return;
          syncClock(data.now);
          const next = new Map(data.devices.map((d) => [d.id, stationCard(d)]));
          cards = next;
          problem.replaceChildren();
          list.replaceChildren(...[...next.values()].map((c) => c.root));
          if (next.size === 0) list.append(el('li', { class: 'muted', id: 'sensors-empty' }, t('sensors.none')));
          markWarnings(next);
        } catch (e) {
          if (view.alive) problem.replaceChildren(errorBox(e.message || t('common.unreachable'), load));
        } finally {
          loading = null;
          main.querySelector('#sensors-loading')?.remove();
        }
        if (again && view.alive) {
          again = false;
          await load();
        }
      })();
    }
    return loading;
  };
  const follow = () => liveStream(view, live, {
    onReadings(readings) {
      const touched = new Set();
      let unknownMetric = false;
      for (const r of newestByMetric(readings)) {
        const card = cards.get(r.device);
        if (!card) continue;
        touched.add(card);
        if (!card.reading(r)) unknownMetric = true;
      }
      for (const card of touched) card.seenNow();
      // A metric the list has not seen yet (a device started sending something new): the node knows
      // its name and unit, so reload rather than guess, but not more than once a minute.
      if (unknownMetric && Date.now() - unknownMetricReload > 60e3) {
        unknownMetricReload = Date.now();
        load();
      }
    },
    onStatus(s) {
      cards.get(s.device)?.status(s);
    },
    reload: load,
  });
  load().then(() => {
    if (view.alive) follow();
  });
  view.every(TICK_MS, () => { for (const card of cards.values()) card.tick(); });
}
