// The station page's charts: uPlot, fetched only when a chart is first shown so the sensors list stays
// cheap on an old phone, and one chart per metric with live readings folded in.
import { t } from '../i18n.js';
import { el } from '../dom.js';
import { formatValue } from './sensors-common.js';

// The chart is drawn on a canvas, which cannot use the CSS variables, so app.css colours are repeated.
const COLOR = '#0b5394';
const COLOR_LIGHT = 'rgba(11, 83, 148, 0.35)';
const COLOR_BAND = 'rgba(11, 83, 148, 0.12)';
const COLOR_BAD = '#cf222e';
const COLOR_AXIS = '#5b6470';
const COLOR_GRID = '#eaeef2';

let uplotLoading = null;
// uPlot and its stylesheet, fetched on first use. Both URLs are resolved against this module, so they
// carry the same /assets/{version}/ prefix (and the year-long cache) as the rest of the UI.
export function loadUplot() {
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
export function metricChart(Uplot, { box, aggregated, stepMs, window: win }) {
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
