// One station: facts, a chart per metric over a chosen time range, a CSV download of the same range,
// and the station's communication errors. This node's own stations are live from its event stream;
// a station of a node below (id `device@origin`) is re-read every 30 s while the page is shown, and
// shows what its node last reported, and the child of this node it came through, instead of the
// errors only that node knows.
import { getJson } from '../api.js';
import { t, lang } from '../i18n.js';
import { el, clear, errorBox } from '../dom.js';
import { startView } from '../view.js';
import { liveStream } from '../live-stream.js';
import { ago, formatTime, nodeNow, syncClock } from '../format.js';
import { TICK_MS, formatValue, known, statusBadge, driverLabel, metricLabel, valueNodes, nodeName, viaText, listHref } from './sensors-common.js';
import { loadUplot, metricChart } from './sensors-chart.js';
import { isTree, isTreeId, viaOf } from '../sensors-logic.js';

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
// Stations below reach this node through sync; the stream does not carry them, so they are re-read.
const TREE_POLL_MS = 30e3;

function formatInterval(seconds) {
  if (!seconds) return '—';
  return seconds < 60 ? `${formatValue(seconds)} ${t('unit.seconds')}` : `${formatValue(seconds / 60)} ${t('unit.minutes')}`;
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
  main.append(el('p', { class: 'back' }, el('a', { href: listHref(), 'data-link': true, id: 'sensors-back' }, t('sensors.back'))));
  const body = el('div', { id: 'station' }, el('p', { class: 'loading' }, t('common.loading')));
  main.append(body);

  // Only the side of the list the station can be on, which for a county is a good deal less to fetch.
  const fetchDevice = async () => {
    const data = await getJson(`/api/v1/sensors?scope=${isTreeId(id) ? 'tree' : 'local'}`);
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

  const tree = isTree(device);
  const via = viaOf(device);
  const badgeSlot = el('span', { class: 'status-slot' });
  const seen = el('span', { class: 'seen' });
  const total = el('span');
  const reported = el('span');
  const described = el('span');
  const facts = el('dl', { class: 'facts' },
    el('dt', {}, t('sensors.node')), el('dd', { id: 'station-node', title: device.origin || null },
      nodeName(device.node_name, { local: !tree, origin: device.origin })),
    // The child of this node its data comes through: where to look when it stops arriving.
    via ? el('dt', {}, t('sensors.via_node')) : null,
    via ? el('dd', { id: 'station-via', title: via.id }, via.name || via.id.slice(0, 8)) : null,
    el('dt', {}, t('sensors.area')), el('dd', { title: device.area }, device.area_name ? `${device.area_name}（${device.area}）` : device.area),
    el('dt', {}, t('sensors.driver')), el('dd', {}, driverLabel(device.driver)),
    el('dt', {}, t('sensors.interval')), el('dd', {}, formatInterval(device.interval_s)),
    el('dt', {}, t('sensors.last_seen')), el('dd', {}, seen));
  // What only the owning node can count (readings since its start, driver errors) is not known here;
  // what it last said of the station, and when, is.
  if (tree) {
    facts.append(
      el('dt', {}, t('sensors.reported_status')), el('dd', { id: 'station-reported' }, reported),
      el('dt', {}, t('sensors.described_at')), el('dd', {}, described));
  } else {
    facts.append(el('dt', {}, t('sensors.readings_total')), el('dd', {}, total));
  }
  const live = el('p', { class: 'live-state small', id: 'sensors-live', 'aria-live': 'polite' });
  const errorsSlot = el('div');
  const showDevice = () => {
    badgeSlot.replaceChildren(statusBadge(device.status, { tree }));
    seen.textContent = ago(device.last_seen);
    if (tree) {
      const r = device.reported_status;
      reported.textContent = r ? known(`sensors.status.${r}`) || r : '—';
      described.textContent = formatTime(device.described_at);
    } else {
      total.textContent = String(device.readings_total ?? 0);
      errorsSlot.replaceChildren(errorsCard(device));
    }
  };

  const buttons = RANGES.map((r) => el('button', { type: 'button', class: 'secondary small', 'data-range': r.key }, t(`sensors.range.${r.key}`)));
  const picker = el('div', { class: 'range-picker', role: 'group', 'aria-label': t('sensors.range') },
    el('span', { class: 'muted small' }, t('sensors.range')), ...buttons);
  // The node names the file without the @ of a station below; the link says the same.
  const csv = el('a', { class: 'button secondary', id: 'sensor-csv', download: `${device.id.replace('@', '_')}-readings.csv` }, t('sensors.download_csv'));
  const charts = el('div', { class: 'charts' });

  body.replaceChildren(
    el('div', { class: 'page-head' }, el('h1', { id: 'station-name' }, device.name), badgeSlot),
    live,
    el('section', { class: 'card' }, facts,
      tree ? el('p', { class: 'muted small tree-note', id: 'station-tree-note' }, t('sensors.tree_note')) : null),
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

  // New data for the charts as they stand, fetched again over the same range and drawn over the old
  // without clearing them first: a station below gains its readings in batches, and a chart that
  // blanked to "loading" every half minute would be hard to read. A chart that failed is left to its
  // retry button; a range chosen meanwhile wins.
  const refreshCharts = async () => {
    const mine = generation;
    const step = stepFor(range, device);
    slideWindow();
    const q = new URLSearchParams({ from: String(Math.floor(win.from)) });
    if (step) q.set('step', step);
    const stepNote = step ? t('sensors.step_note').replace('{step}', t(`sensors.step.${step}`)) : t('sensors.raw_note');
    // A failure leaves the chart with what it showed; the caller says the refresh failed.
    await Promise.all([...cards.values()].filter((card) => card.chart).map(async (card) => {
      const data = await getJson(`/api/v1/sensors/${encodeURIComponent(device.id)}/readings?${q}&metric=${encodeURIComponent(card.point.metric)}`, { timeoutMs: 30000 });
      if (!view.alive || mine !== generation || !card.chart) return;
      card.chart.load(data);
      card.notes = data.truncated ? [stepNote, t('sensors.truncated')] : [stepNote];
      showNote(card);
    }));
  };

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

  // The newest moment the station's data speaks of: when it moves, a station below has new readings.
  const dataMark = (d) => Math.max(d.last_seen || 0, ...d.points.map((p) => (p.latest ? p.latest.t : 0)));
  // The time is that of the last read that worked, so a failing one says how old the page is.
  let polledAt = nodeNow();
  const showPolled = (failed) => {
    if (!failed) polledAt = nodeNow();
    live.dataset.state = failed ? 'lost' : 'polled';
    live.textContent = t(failed ? 'sensors.tree_refresh_failed' : 'sensors.tree_refresh', { time: formatTime(polledAt, { date: false, seconds: true }) });
  };

  let refreshing = null;
  // What was asked while a reload was on its way: null, 'soft', or 'full' (which covers a soft one).
  let again = null;
  // `soft`: the periodic re-read of a station below, which redraws its charts only when it brought
  // something new; otherwise (reconnects, lagged events, coming back to the page) charts reload.
  const reload = ({ soft = false } = {}) => {
    // As for the list (sensors-list.js): requests that come together share one reload, plus one if
    // asked meanwhile.
    if (refreshing) {
      again = again === 'full' || !soft ? 'full' : 'soft';
    } else {
      refreshing = (async () => {
        try {
          const fresh = await fetchDevice();
          if (!view.alive || !fresh) return;
          const moved = dataMark(fresh) !== dataMark(device);
          device = fresh;
          for (const p of fresh.points) {
            const card = cards.get(p.metric);
            if (card) { card.point = p; showLatest(card); }
          }
          showDevice();
          if (!soft) await loadCharts();
          else if (moved) await refreshCharts();
          if (tree && view.alive) showPolled(false);
        } catch (_) {
          // For this node's stations the live state line already says the link is down and the next
          // reconnect tries again; for one below the line says so, and the next poll tries again.
          if (tree && view.alive) showPolled(true);
        } finally {
          refreshing = null;
        }
        if (again && view.alive) {
          const next = again;
          again = null;
          await reload({ soft: next === 'soft' });
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
  view.listen(window, 'resize', onResize);
  view.add(() => clearTimeout(resizeTimer));

  if (tree) {
    // The line changes with every poll; read out each time, it would talk over the page.
    live.removeAttribute('aria-live');
    showPolled(false);
    view.every(TREE_POLL_MS, () => { if (!document.hidden) reload({ soft: true }); });
    view.listen(document, 'visibilitychange', () => { if (!document.hidden) reload({ soft: true }); });
  } else {
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
      reload: () => reload(),
    });
  }
  // Relative times age, and an idle chart's window should still end at "now".
  view.every(TICK_MS, () => {
    seen.textContent = ago(device.last_seen);
    slideWindow();
    for (const card of cards.values()) card.chart?.redraw();
  });

  await loadCharts();
}
