// The sensors pages: the stations this user's area can see, with status and latest values kept live
// from the node's event stream, and one station's charts over a chosen time range with a CSV download
// and its communication errors. uPlot is loaded only when a chart view opens, so the list stays cheap
// on an old phone.
import { getJson } from '../api.js';
import { t, lang } from '../i18n.js';
import { el, clear, errorBox } from '../dom.js';
import { onLeave } from '../router.js';
import { formatTime } from '../incidents-common.js';

const STATUSES = ['online', 'stale', 'faulty', 'unknown'];
const HOUR_MS = 3600e3;

// Raw readings for the short ranges; aggregates for the long ones, where raw points would be more
// than a phone screen has pixels for.
const RANGES = [
  { key: '1h', ms: HOUR_MS, step: null },
  { key: '6h', ms: 6 * HOUR_MS, step: null },
  { key: '24h', ms: 24 * HOUR_MS, step: '10m' },
  { key: '7d', ms: 7 * 24 * HOUR_MS, step: '1h' },
  { key: '30d', ms: 30 * 24 * HOUR_MS, step: '1h' },
];
const DEFAULT_RANGE = '24h';
const STEP_MS = { '1m': 60e3, '10m': 600e3, '1h': HOUR_MS };
// A device polled every second would send 21 600 raw points for 6 h: too much over bad Wi-Fi and for
// an old phone to draw. Past this many expected points a "raw" range is fetched as 1-minute aggregates.
const MAX_RAW_POINTS = 2000;

const TICK_MS = 30e3;
// Readings arrive in bursts (one event per committed batch); gathering them for a moment means one
// DOM and chart update per burst instead of one per event.
const FLUSH_DELAY_MS = 250;
// The browser re-establishes a dropped stream by itself, but gives up after an HTTP error (for
// example an expired session); then we try again this much later.
const RETRY_MS = 30e3;

// The chart is drawn on a canvas, which cannot use the CSS variables, so app.css colours are repeated.
const COLOR = '#0b5394';
const COLOR_LIGHT = 'rgba(11, 83, 148, 0.35)';
const COLOR_BAND = 'rgba(11, 83, 148, 0.12)';
const COLOR_BAD = '#cf222e';
const COLOR_AXIS = '#5b6470';
const COLOR_GRID = '#eaeef2';

// The node's clock minus this phone's: "last seen" and chart windows are measured against the node,
// whose clock is kept right, not against a phone that may be minutes off.
let clockOffset = 0;
function syncClock(nodeNowMs) {
  if (typeof nodeNowMs === 'number') clockOffset = nodeNowMs - Date.now();
}
function nodeNow() {
  return Date.now() + clockOffset;
}

// ---------------------------------------------------------------------------------------------
// Formatting

function ago(ms) {
  if (ms === null || ms === undefined) return t('sensors.never');
  const seconds = Math.max(0, (nodeNow() - ms) / 1000);
  // The text is refreshed every 30 s, so finer than a minute would only be wrong most of the time.
  if (seconds < 60) return t('sensors.just_now');
  const [n, unit] = seconds < 3600 ? [Math.floor(seconds / 60), 'unit.minutes']
    : seconds < 86400 ? [Math.floor(seconds / 3600), 'unit.hours'] : [Math.floor(seconds / 86400), 'unit.days'];
  return lang() === 'en' ? `${n} ${t(unit)} ago` : `${n} ${t(unit)}前`;
}

function formatValue(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '—';
  return String(Math.round(v * 1000) / 1000);
}

function formatInterval(seconds) {
  if (!seconds) return '—';
  return seconds < 60 ? `${formatValue(seconds)} ${t('unit.seconds')}` : `${formatValue(seconds / 60)} ${t('unit.minutes')}`;
}

// t() answers with the key itself when there is no text; the caller then falls back to the raw code.
function known(key) {
  const text = t(key);
  return text === key ? null : text;
}

function statusBadge(status) {
  const s = STATUSES.includes(status) ? status : 'unknown';
  return el('span', { class: `badge status status-${s}`, 'data-status': s, title: t(`sensors.status_help.${s}`) },
    t(`sensors.status.${s}`));
}

function driverLabel(driver) {
  return known(`sensors.driver.${driver}`) || driver;
}

// The configured display name (HJ 212 factor names come from the node), else a name the UI knows for
// common metrics; the code is then shown small beside it, because that is what devices and CSV use.
function metricLabel(point) {
  const name = point.name || known(`metric.${point.metric}`);
  if (!name) return [el('span', { class: 'metric-name' }, point.metric)];
  return [el('span', { class: 'metric-name' }, name), ' ', el('small', { class: 'metric-code' }, `(${point.metric})`)];
}

function qualityMark(quality) {
  if (!quality || quality === 'good') return null;
  const text = known(`sensors.quality.${quality}`) || quality;
  return el('span', { class: 'quality-mark', role: 'img', title: text, 'aria-label': text, 'data-quality': quality }, '⚠');
}

function valueNodes(latest, unit) {
  if (!latest) return [el('span', { class: 'muted small' }, t('sensors.no_value'))];
  const u = latest.unit || unit;
  return [el('strong', {}, formatValue(latest.value)), u ? el('span', { class: 'metric-unit' }, u) : null, qualityMark(latest.quality)];
}

function csvHref(id, range, step) {
  const q = new URLSearchParams({ from: String(Math.floor(nodeNow() - range.ms)) });
  if (step) q.set('step', step);
  return `/api/v1/sensors/${encodeURIComponent(id)}/readings.csv?${q}`;
}

function stepFor(range, device) {
  if (range.step) return range.step;
  const interval = device.interval_s > 0 ? device.interval_s : 60;
  return range.ms / 1000 / interval > MAX_RAW_POINTS ? '1m' : null;
}

// ---------------------------------------------------------------------------------------------
// Page lifetime and the live stream

// Everything a view starts (stream, timers, listeners, charts) is released when the router leaves it;
// `alive` lets a render that was still waiting on the network notice it is no longer wanted.
function startView() {
  const view = { alive: true, cleanups: [] };
  view.add = (fn) => view.cleanups.push(fn);
  view.every = (ms, fn) => {
    const id = setInterval(fn, ms);
    view.add(() => clearInterval(id));
  };
  onLeave(() => {
    view.alive = false;
    for (const fn of view.cleanups.splice(0)) {
      try { fn(); } catch (_) { /* keep releasing the rest */ }
    }
  });
  return view;
}

// One EventSource while the page is visible: a hidden tab or a locked phone should not keep a
// connection and the radio busy. Coming back (or reconnecting) means events were missed, so the view
// reloads instead of trusting a gap.
function liveStream(view, stateEl, { onReadings, onStatus, reload }) {
  let source = null;
  let queue = [];
  let statuses = new Map();
  let timer = null;
  let frame = null;
  let retry = null;
  let reconnecting = false;

  const setState = (state) => {
    stateEl.dataset.state = state;
    stateEl.textContent = state === 'live' ? t('sensors.live') : state === 'lost' ? t('sensors.live_lost') : '';
  };
  const flush = () => {
    frame = null;
    const readings = queue;
    const changed = [...statuses.values()];
    queue = [];
    statuses = new Map();
    if (readings.length) onReadings(readings);
    for (const s of changed) onStatus(s);
  };
  const schedule = () => {
    if (timer !== null || frame !== null) return;
    timer = setTimeout(() => { timer = null; frame = requestAnimationFrame(flush); }, FLUSH_DELAY_MS);
  };
  const drop = () => {
    clearTimeout(timer);
    if (frame !== null) cancelAnimationFrame(frame);
    timer = null;
    frame = null;
    queue = [];
    statuses = new Map();
  };
  const disconnect = () => {
    clearTimeout(retry);
    retry = null;
    if (source) source.close();
    source = null;
    drop();
  };
  const connect = () => {
    if (source || !view.alive || document.hidden) return;
    source = new EventSource('/api/v1/stream');
    source.addEventListener('open', () => {
      setState('live');
      if (reconnecting) reload();
      reconnecting = false;
    });
    source.addEventListener('readings', (e) => {
      let batch;
      try { batch = JSON.parse(e.data); } catch (_) { return; }
      if (Array.isArray(batch)) for (const r of batch) queue.push(r);
      schedule();
    });
    source.addEventListener('status', (e) => {
      let s;
      try { s = JSON.parse(e.data); } catch (_) { return; }
      if (s && s.device) statuses.set(s.device, s);
      schedule();
    });
    source.addEventListener('lagged', () => {
      // Some events were dropped for this client; what is queued has gaps too.
      drop();
      reload();
    });
    source.addEventListener('error', () => {
      setState('lost');
      reconnecting = true;
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        retry = setTimeout(() => { retry = null; connect(); }, RETRY_MS);
      }
    });
  };
  const onVisibility = () => {
    if (document.hidden) {
      disconnect();
      return;
    }
    reconnecting = false;
    reload();
    connect();
  };
  document.addEventListener('visibilitychange', onVisibility);
  view.add(() => {
    document.removeEventListener('visibilitychange', onVisibility);
    disconnect();
  });
  connect();
}

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

// ---------------------------------------------------------------------------------------------
// The station list

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
    el('p', { class: 'station-meta muted small' }, `${device.area} · ${driverLabel(device.driver)} · ${t('sensors.last_seen')} `, seen),
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

// ---------------------------------------------------------------------------------------------
// One station: charts, CSV, errors

let uplotLoading = null;
// uPlot and its stylesheet, fetched on first use. Both URLs are resolved against this module, so they
// carry the same /assets/{version}/ prefix (and the year-long cache) as the rest of the UI.
function loadUplot() {
  if (!uplotLoading) {
    const href = new URL('../../vendor/uplot/uPlot.min.css', import.meta.url).href;
    let css = Promise.resolve();
    if (![...document.querySelectorAll('link[rel="stylesheet"]')].some((l) => l.href === href)) {
      const link = el('link', { rel: 'stylesheet', href });
      // A missing stylesheet only makes the legend plainer; it must not stop the chart.
      css = new Promise((resolve) => { link.addEventListener('load', resolve); link.addEventListener('error', resolve); });
      document.head.append(link);
    }
    uplotLoading = Promise.all([import('../../vendor/uplot/uPlot.esm.js'), css])
      .then(([module]) => module.default)
      .catch((e) => { uplotLoading = null; throw e; });
  }
  return uplotLoading;
}

// Time axis labels in 24-hour form for both languages (uPlot's defaults are US 12-hour). Rows are
// [smallest tick step in s, label, then labels used when the year, month, day, hour, minute or second
// rolls over, then 1 = append the rollover label to the plain one].
const NL = '\n';
const X_STAMPS = [
  [365 * 86400, '{YYYY}', null, null, null, null, null, null, 1],
  [28 * 86400, '{YYYY}-{MM}', null, null, null, null, null, null, 1],
  [86400, '{M}/{D}', `${NL}{YYYY}`, null, null, null, null, null, 1],
  [3600, '{HH}:{mm}', `${NL}{YYYY}/{M}/{D}`, null, `${NL}{M}/{D}`, null, null, null, 1],
  [60, '{HH}:{mm}', `${NL}{YYYY}/{M}/{D}`, null, `${NL}{M}/{D}`, null, null, null, 1],
  [1, ':{ss}', `${NL}{YYYY}/{M}/{D} {HH}:{mm}`, null, `${NL}{M}/{D} {HH}:{mm}`, null, `${NL}{HH}:{mm}`, null, 1],
];

function chartHeight() {
  return window.innerWidth >= 900 ? 260 : 200;
}

// One metric's chart: fetched series, live points folded in, and the uPlot instance.
function metricChart(Uplot, { box, aggregated, stepMs, window: win }) {
  const valueOf = (u, v) => (v === null || v === undefined ? '—' : formatValue(v));
  const series = [{ label: t('sensors.series.time'), value: '{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}' }];
  if (aggregated) {
    series.push(
      { label: t('sensors.series.mean'), stroke: COLOR, width: 2, value: valueOf },
      { label: t('sensors.series.min'), stroke: COLOR_LIGHT, width: 1, value: valueOf },
      { label: t('sensors.series.max'), stroke: COLOR_LIGHT, width: 1, value: valueOf });
  } else {
    series.push(
      { label: t('sensors.series.value'), stroke: COLOR, width: 2, value: valueOf },
      // Suspect readings as red dots over the line, so a sensor going bad is visible in the chart.
      { label: t('sensors.series.suspect'), stroke: COLOR_BAD, paths: () => null, value: valueOf,
        points: { show: true, size: 7, stroke: COLOR_BAD, fill: COLOR_BAD } });
  }
  const axis = { stroke: COLOR_AXIS, grid: { stroke: COLOR_GRID, width: 1 }, ticks: { stroke: COLOR_GRID, width: 1 } };
  const options = {
    width: Math.max(200, box.clientWidth),
    height: chartHeight(),
    series,
    bands: aggregated ? [{ series: [3, 2], fill: COLOR_BAND }] : [],
    scales: {
      x: { time: true, range: () => [win.from / 1000, win.to / 1000] },
      // Fitted to the data rather than from zero: a river moving 5 cm on a 2 m level must show.
      y: { range: (u, min, max) => {
        if (!Number.isFinite(min) || !Number.isFinite(max)) return [0, 1];
        const pad = max > min ? (max - min) * 0.1 : Math.max(Math.abs(max) * 0.05, 0.1);
        return [min - pad, max + pad];
      } },
    },
    axes: [
      { ...axis, values: X_STAMPS },
      { ...axis, size: 52, values: (u, ticks) => ticks.map((v) => formatValue(v)) },
    ],
    // Drag-to-zoom has no obvious way back on a phone; the range buttons do that job.
    cursor: { drag: { x: false, y: false, setScale: false } },
    legend: { live: true },
  };
  // Columns: time (s), then value and suspect (raw) or mean, min, max and the count behind the mean.
  let cols = aggregated ? [[], [], [], [], []] : [[], [], []];
  let u = null;
  let pending = [];

  const plotted = () => (aggregated ? cols.slice(0, 4) : cols);
  const insertIndex = (x) => {
    // Scanning from the end: live readings are almost always the newest.
    let i = cols[0].length;
    while (i > 0 && cols[0][i - 1] > x) i--;
    return i;
  };
  const fold = (r) => {
    if (aggregated) {
      // The node aggregates only trustworthy readings; do the same so the live bucket matches.
      if (r.quality !== 'good' && r.quality !== 'clock_corrected') return;
      const x = (Math.floor(r.time_ms / stepMs) * stepMs) / 1000;
      const i = insertIndex(x);
      if (i > 0 && cols[0][i - 1] === x) {
        const j = i - 1;
        const n = cols[4][j];
        cols[1][j] = (cols[1][j] * n + r.value) / (n + 1);
        cols[2][j] = Math.min(cols[2][j], r.value);
        cols[3][j] = Math.max(cols[3][j], r.value);
        cols[4][j] = n + 1;
      } else {
        [x, r.value, r.value, r.value, 1].forEach((v, c) => cols[c].splice(i, 0, v));
      }
    } else {
      const x = r.time_ms / 1000;
      const suspect = r.quality === 'good' ? null : r.value;
      const i = insertIndex(x);
      if (i > 0 && cols[0][i - 1] === x) {
        cols[1][i - 1] = r.value;
        cols[2][i - 1] = suspect;
      } else {
        [x, r.value, suspect].forEach((v, c) => cols[c].splice(i, 0, v));
      }
    }
  };
  const trim = () => {
    const oldest = win.from / 1000 - (aggregated ? stepMs / 1000 : 0);
    let k = 0;
    while (k < cols[0].length && cols[0][k] < oldest) k++;
    if (k > 0) for (const c of cols) c.splice(0, k);
  };

  return {
    get empty() { return cols[0].length === 0; },
    // Called with the fetched series; readings that arrived while it was on its way are folded in,
    // except, for aggregates, those the node had already counted before it answered.
    load(data) {
      if (aggregated) {
        cols = [[], [], [], [], []];
        for (const p of data.points) [p.t / 1000, p.mean, p.min, p.max, p.count].forEach((v, c) => cols[c].push(v));
      } else {
        cols = [[], [], []];
        for (const p of data.points) [p.t / 1000, p.value, p.quality === 'good' ? null : p.value].forEach((v, c) => cols[c].push(v));
      }
      for (const r of pending) if (!aggregated || r.time_ms >= data.to) fold(r);
      pending = [];
      trim();
      if (u) u.setData(plotted());
      else u = new Uplot(options, plotted(), box);
    },
    append(r) {
      if (!u) pending.push(r);
      else fold(r);
    },
    redraw() {
      if (!u) return;
      trim();
      u.setData(plotted());
    },
    fit() {
      if (u) u.setSize({ width: Math.max(200, box.clientWidth), height: chartHeight() });
    },
    destroy() {
      if (u) u.destroy();
      u = null;
    },
  };
}

function errorsCard(device) {
  const card = el('section', { class: 'card', id: 'station-errors' }, el('h2', {}, t('sensors.errors')));
  const kinds = Object.entries(device.errors || {}).filter(([, n]) => n > 0);
  if (kinds.length === 0 && !device.last_error) {
    card.append(el('p', { class: 'muted' }, t('sensors.no_errors')));
    return card;
  }
  const kindLabel = (kind) => known(`sensors.error.${kind}`) || kind;
  if (kinds.length > 0) {
    card.append(el('table', { class: 'table' },
      el('thead', {}, el('tr', {}, el('th', {}, t('sensors.error_kind')), el('th', {}, t('sensors.error_count')))),
      el('tbody', {}, ...kinds.map(([kind, n]) => el('tr', { 'data-kind': kind },
        el('td', {}, kindLabel(kind), ' ', el('small', { class: 'metric-code' }, `(${kind})`)), el('td', {}, String(n)))))));
  }
  if (device.last_error) {
    const e = device.last_error;
    card.append(el('p', { class: 'small' }, el('strong', {}, `${t('sensors.last_error')}: `),
      `${formatTime(e.at)} · ${kindLabel(e.kind)}`, e.message ? el('span', { class: 'last-error-message' }, ` — ${e.message}`) : null));
  }
  return card;
}

// Like the list, not awaited by the router; the page fills in as its data arrives.
export function renderStation(main, params) {
  station(main, params);
}

async function station(main, { id }) {
  const view = startView();
  clear(main);
  const query = new URLSearchParams(location.search);
  let range = RANGES.find((r) => r.key === query.get('range')) || RANGES.find((r) => r.key === DEFAULT_RANGE);
  // The metric a list entry was tapped for: scrolled to once its chart is there, then forgotten.
  let focus = query.get('metric');
  main.append(el('p', { class: 'back' }, el('a', { href: '/sensors', 'data-link': true, id: 'sensors-back' }, t('sensors.back'))));
  const body = el('div', { id: 'station' }, el('p', { class: 'loading' }, t('common.loading')));
  main.append(body);

  const fetchDevice = async () => {
    const data = await getJson('/api/v1/sensors');
    syncClock(data.now);
    return data.devices.find((d) => d.id === id) || null;
  };
  let device;
  try {
    device = await fetchDevice();
  } catch (e) {
    if (view.alive) body.replaceChildren(errorBox(e.message || t('common.unreachable'), () => station(main, { id })));
    return;
  }
  if (!view.alive) return;
  if (!device) {
    body.replaceChildren(el('h1', {}, t('notfound.title')), el('p', {}, t('notfound.body')));
    return;
  }

  const badgeSlot = el('span', { class: 'status-slot' });
  const seen = el('span', { class: 'seen' });
  const total = el('span');
  const facts = el('dl', { class: 'facts' },
    el('dt', {}, t('sensors.area')), el('dd', {}, device.area),
    el('dt', {}, t('sensors.driver')), el('dd', {}, driverLabel(device.driver)),
    el('dt', {}, t('sensors.interval')), el('dd', {}, formatInterval(device.interval_s)),
    el('dt', {}, t('sensors.last_seen')), el('dd', {}, seen),
    el('dt', {}, t('sensors.readings_total')), el('dd', {}, total));
  const live = el('p', { class: 'live-state small', id: 'sensors-live', 'aria-live': 'polite' });
  const errorsSlot = el('div');
  const showDevice = () => {
    badgeSlot.replaceChildren(statusBadge(device.status));
    seen.textContent = ago(device.last_seen);
    total.textContent = String(device.readings_total ?? 0);
    errorsSlot.replaceChildren(errorsCard(device));
  };

  const buttons = RANGES.map((r) => el('button', { type: 'button', class: 'secondary small', 'data-range': r.key }, t(`sensors.range.${r.key}`)));
  const picker = el('div', { class: 'range-picker', role: 'group', 'aria-label': t('sensors.range') },
    el('span', { class: 'muted small' }, t('sensors.range')), ...buttons);
  const csv = el('a', { class: 'button secondary', id: 'sensor-csv', download: `${device.id}-readings.csv` }, t('sensors.download_csv'));
  const charts = el('div', { class: 'charts' });

  body.replaceChildren(
    el('div', { class: 'page-head' }, el('h1', { id: 'station-name' }, device.name), badgeSlot),
    live,
    el('section', { class: 'card' }, facts),
    el('div', { class: 'card chart-controls' }, picker, csv),
    charts,
    errorsSlot);
  showDevice();

  // One card per metric; the cards stay across range changes, the charts inside are rebuilt.
  const cards = new Map();
  for (const point of device.points) {
    const latest = el('p', { class: 'chart-latest' });
    const note = el('p', { class: 'muted small chart-note' });
    const box = el('div', { class: 'chart' });
    const section = el('section', { class: 'card chart-card', 'data-metric': point.metric },
      el('h2', {}, ...metricLabel(point)), latest, note, box);
    cards.set(point.metric, { point, section, latest, note, box, chart: null, notes: [] });
    charts.append(section);
  }
  if (device.points.length === 0) charts.append(el('p', { class: 'muted card' }, t('sensors.no_value')));
  const showLatest = (card) => {
    const l = card.point.latest;
    const parts = [el('span', { class: 'muted small' }, `${t('sensors.latest')} `), ...valueNodes(l, card.point.unit)];
    if (l) parts.push(el('span', { class: 'muted small' }, ` · ${formatTime(l.t)}`));
    // In the chart view there is room to say why a value is suspect, not only to mark it.
    if (l && l.quality !== 'good') parts.push(' ', el('span', { class: 'quality-text' }, known(`sensors.quality.${l.quality}`) || l.quality));
    card.latest.replaceChildren(...parts.filter(Boolean));
  };
  const showNote = (card) => {
    const empty = card.chart && card.chart.empty ? [t('sensors.chart_empty')] : [];
    card.note.textContent = [...card.notes, ...empty].join(lang() === 'en' ? ' ' : '');
  };
  for (const card of cards.values()) showLatest(card);

  // The window every chart shows: the chosen range ending now, moved along as time passes.
  const win = { from: 0, to: 0 };
  const slideWindow = () => {
    win.to = nodeNow();
    win.from = win.to - range.ms;
  };

  let Uplot = null;
  let generation = 0;
  const loadCharts = async () => {
    const mine = ++generation;
    const step = stepFor(range, device);
    for (const b of buttons) b.setAttribute('aria-pressed', String(b.dataset.range === range.key));
    csv.href = csvHref(device.id, range, step);
    slideWindow();
    for (const card of cards.values()) {
      card.chart?.destroy();
      card.chart = null;
      card.box.replaceChildren(el('p', { class: 'loading small' }, t('common.loading')));
      card.notes = [];
      card.note.textContent = '';
    }
    try {
      Uplot = await loadUplot();
    } catch (e) {
      if (view.alive && mine === generation) {
        for (const card of cards.values()) card.box.replaceChildren(errorBox(t('common.unreachable'), loadCharts));
      }
      return;
    }
    if (!view.alive || mine !== generation) return;
    const q = new URLSearchParams({ from: String(Math.floor(win.from)) });
    if (step) q.set('step', step);
    const stepNote = step ? t('sensors.step_note').replace('{step}', t(`sensors.step.${step}`)) : t('sensors.raw_note');
    await Promise.all([...cards.values()].map(async (card) => {
      // Charts exist before their data so live readings arriving meanwhile are kept, not lost.
      card.box.replaceChildren();
      card.chart = metricChart(Uplot, { box: card.box, aggregated: Boolean(step), stepMs: STEP_MS[step], window: win });
      try {
        const data = await getJson(`/api/v1/sensors/${encodeURIComponent(device.id)}/readings?${q}&metric=${encodeURIComponent(card.point.metric)}`, { timeoutMs: 30000 });
        if (!view.alive || mine !== generation) return;
        card.chart.load(data);
        card.notes = data.truncated ? [stepNote, t('sensors.truncated')] : [stepNote];
        showNote(card);
      } catch (e) {
        if (!view.alive || mine !== generation) return;
        card.chart.destroy();
        card.chart = null;
        card.box.replaceChildren(errorBox(e.message || t('common.unreachable'), loadCharts));
      }
    }));
    if (view.alive && mine === generation && focus && cards.has(focus)) {
      cards.get(focus).section.scrollIntoView({ block: 'start' });
      focus = null;
    }
  };
  view.add(() => { generation++; for (const card of cards.values()) card.chart?.destroy(); });

  for (const b of buttons) {
    b.addEventListener('click', () => {
      range = RANGES.find((r) => r.key === b.dataset.range);
      // The range is in the address so a reload or a shared link shows the same view; replaceState
      // keeps the back button for pages, not for every range tried.
      history.replaceState({}, '', `${location.pathname}?range=${range.key}`);
      loadCharts();
    });
  }
  // The CSV covers the range as of the moment it is downloaded, not as of when the page opened.
  csv.addEventListener('click', () => { csv.href = csvHref(device.id, range, stepFor(range, device)); });

  let refreshing = null;
  let again = false;
  const reload = () => {
    // As for the list: requests that come together share one reload, plus one if asked meanwhile.
    if (refreshing) {
      again = true;
    } else {
      refreshing = (async () => {
        try {
          const fresh = await fetchDevice();
          if (!view.alive || !fresh) return;
          device = fresh;
          for (const p of fresh.points) {
            const card = cards.get(p.metric);
            if (card) { card.point = p; showLatest(card); }
          }
          showDevice();
          await loadCharts();
        } catch (_) {
          // The live state line already says the link is down; the next reconnect tries again.
        } finally {
          refreshing = null;
        }
        if (again && view.alive) {
          again = false;
          await reload();
        }
      })();
    }
    return refreshing;
  };

  let resizeTimer = null;
  const onResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { for (const card of cards.values()) card.chart?.fit(); }, 200);
  };
  window.addEventListener('resize', onResize);
  view.add(() => { window.removeEventListener('resize', onResize); clearTimeout(resizeTimer); });

  liveStream(view, live, {
    onReadings(readings) {
      let mine = 0;
      const touched = new Set();
      for (const r of readings) {
        if (r.device !== device.id) continue;
        mine += 1;
        const card = cards.get(r.metric);
        if (!card) continue;
        card.chart?.append(r);
        touched.add(card);
        if (!card.point.latest || r.time_ms >= card.point.latest.t) {
          card.point.latest = { t: r.time_ms, value: r.value, unit: r.unit, quality: r.quality };
        }
      }
      if (!mine) return;
      device.last_seen = nodeNow();
      seen.textContent = ago(device.last_seen);
      device.readings_total = (device.readings_total ?? 0) + mine;
      total.textContent = String(device.readings_total);
      slideWindow();
      for (const card of touched) {
        showLatest(card);
        card.chart?.redraw();
        showNote(card);
      }
    },
    onStatus(s) {
      if (s.device !== device.id) return;
      device.status = s.status;
      if (s.last_seen !== undefined && s.last_seen !== null) device.last_seen = s.last_seen;
      badgeSlot.replaceChildren(statusBadge(device.status));
      seen.textContent = ago(device.last_seen);
    },
    reload,
  });
  // Relative times age, and an idle chart's window should still end at "now".
  view.every(TICK_MS, () => {
    seen.textContent = ago(device.last_seen);
    slideWindow();
    for (const card of cards.values()) card.chart?.redraw();
  });

  await loadCharts();
}
