// What the sensors list and the station page both show: status badges, metric names and latest
// values, in the same words and the same markup, so a station looks alike in both places.
import { t } from '../i18n.js';
import { el } from '../dom.js';

const STATUSES = ['online', 'stale', 'faulty', 'unknown'];
// Relative times count in minutes at finest, so moving them (and idle chart windows) on this often
// is enough.
export const TICK_MS = 30e3;

// The list's filters as last chosen, so the station page's way back returns to the same list. Kept
// in the module, which lives as long as the page does: a fresh start begins with the whole list.
let listQuery = '';
export function rememberListQuery(query) {
  listQuery = typeof query === 'string' ? query : '';
}
export function listHref() {
  return `/sensors${listQuery}`;
}

export function formatValue(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '—';
  return String(Math.round(v * 1000) / 1000);
}

// t() answers with the key itself when there is no text; the caller then falls back to the raw code.
export function known(key) {
  const text = t(key);
  return text === key ? null : text;
}

// A station below is judged here from what arrives over the links, so its help says so: "stale" may
// be the link as well as the station.
export function statusBadge(status, { tree = false } = {}) {
  const s = STATUSES.includes(status) ? status : 'unknown';
  const help = tree ? t(`sensors.status_help_tree.${s}`) : t(`sensors.status_help.${s}`);
  return el('span', { class: `badge status status-${s}`, 'data-status': s, title: help }, t(`sensors.status.${s}`));
}

// Whose a station is, as a heading or a fact says it: the node's name, this node's marked as such.
export function nodeName(name, { local = false, origin = null } = {}) {
  const text = name || (origin ? origin.slice(0, 8) : '');
  return local ? t('sensors.node_local', { name: text || t('sensors.this_node') }) : text || t('sensors.node_unnamed');
}

// The child a station below came through (sensors-logic.js viaOf), as the pages add it to the owning
// node's name: "经 城关镇", the id cut short when the child's name is not known here.
export function viaText(via) {
  return via ? t('sensors.via', { name: via.name || via.id.slice(0, 8) }) : null;
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
