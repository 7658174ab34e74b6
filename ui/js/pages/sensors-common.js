// What the sensors list and the station page both show: status badges, metric names and latest
// values, in the same words and the same markup, so a station looks alike in both places.
import { t } from '../i18n.js';
import { el } from '../dom.js';

const STATUSES = ['online', 'stale', 'faulty', 'unknown'];
// Relative times count in minutes at finest, so moving them (and idle chart windows) on this often
// is enough.
export const TICK_MS = 30e3;

export function formatValue(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '—';
  return String(Math.round(v * 1000) / 1000);
}

// t() answers with the key itself when there is no text; the caller then falls back to the raw code.
export function known(key) {
  const text = t(key);
  return text === key ? null : text;
}

export function statusBadge(status) {
  const s = STATUSES.includes(status) ? status : 'unknown';
  return el('span', { class: `badge status status-${s}`, 'data-status': s, title: t(`sensors.status_help.${s}`) },
    t(`sensors.status.${s}`));
}

export function driverLabel(driver) {
  return known(`sensors.driver.${driver}`) || driver;
}

// The configured display name (HJ 212 factor names come from the node), else a name the UI knows for
// common metrics; the code is then shown small beside it, because that is what devices and CSV use.
export function metricLabel(point) {
  const name = point.name || known(`metric.${point.metric}`);
  if (!name) return [el('span', { class: 'metric-name' }, point.metric)];
  return [el('span', { class: 'metric-name' }, name), ' ', el('small', { class: 'metric-code' }, `(${point.metric})`)];
}

function qualityMark(quality) {
  if (!quality || quality === 'good') return null;
  const text = known(`sensors.quality.${quality}`) || quality;
  return el('span', { class: 'quality-mark', role: 'img', title: text, 'aria-label': text, 'data-quality': quality }, '⚠');
}

export function valueNodes(latest, unit) {
  if (!latest) return [el('span', { class: 'muted small' }, t('sensors.no_value'))];
  const u = latest.unit || unit;
  return [el('strong', {}, formatValue(latest.value)), u ? el('span', { class: 'metric-unit' }, u) : null, qualityMark(latest.quality)];
}
