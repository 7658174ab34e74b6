// Times as the UI shows them, in one place so every page writes a moment the same way: wall-clock
// text, relative text, and the node's clock that sensor times are measured against.
import { t, lang } from './i18n.js';
import { lateness, durationParts } from './incidents-logic.js';

const pad = (n) => String(n).padStart(2, '0');

// 24-hour local time in both languages, year first, so it reads the same to everyone and sorts. The
// audit log adds seconds because its entries often share a minute; the header's "offline since" is
// always recent, so the date would only take room.
export function formatTime(ms, { seconds = false, date = true } = {}) {
  if (!ms) return '—';
  const d = new Date(ms);
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? `:${pad(d.getSeconds())}` : ''}`;
  return date ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock}` : clock;
}

// For incident deadlines, which lie ahead as often as behind, so it says "in …" as well as "… ago".
export function relative(ms) {
  const minutes = Math.round((ms - Date.now()) / 60000);
  const abs = Math.abs(minutes);
  const unit = abs >= 1440 ? [Math.round(abs / 1440), t('unit.days')] : abs >= 60 ? [Math.round(abs / 60), t('unit.hours')] : [abs, t('unit.minutes')];
  const span = `${unit[0]} ${unit[1]}`;
  if (lang() === 'en') return minutes >= 0 ? `in ${span}` : `${span} ago`;
  return minutes >= 0 ? `${span}后` : `${span}前`;
}

// How late an overdue item is: "超期 3 小时" / "3 h overdue"; null when it is not past `dueMs`.
export function overdueText(dueMs, now = Date.now()) {
  const late = lateness(dueMs, now);
  return late ? t('incident.overdue_by', { span: `${late.n} ${t(`unit.${late.unit}`)}` }) : null;
}

// A length of time as the deadlines are spoken of: "72 小时", "7 天", "72 h".
export function durationText(minutes) {
  const d = durationParts(minutes);
  return `${d.n} ${t(`unit.${d.unit}`)}`;
}

// The node's clock minus this phone's: "last seen" and chart windows are measured against the node,
// whose clock is kept right, not against a phone that may be minutes off.
let clockOffset = 0;
export function syncClock(nodeNowMs) {
  if (typeof nodeNowMs === 'number') clockOffset = nodeNowMs - Date.now();
}
export function nodeNow() {
  return Date.now() + clockOffset;
}

// Sensor "last seen" times are stamped by the node, so their age is taken against its clock.
export function ago(ms) {
  if (ms === null || ms === undefined) return t('sensors.never');
  const seconds = Math.max(0, (nodeNow() - ms) / 1000);
  // The text is refreshed every 30 s, so finer than a minute would only be wrong most of the time.
  if (seconds < 60) return t('sensors.just_now');
  const [n, unit] = seconds < 3600 ? [Math.floor(seconds / 60), 'unit.minutes']
    : seconds < 86400 ? [Math.floor(seconds / 3600), 'unit.hours'] : [Math.floor(seconds / 86400), 'unit.days'];
  return lang() === 'en' ? `${n} ${t(unit)} ago` : `${n} ${t(unit)}前`;
}

// The age of an answer the service worker gave from the phone's copy: "离线数据 · 3 分钟前". Both
// times are the phone's own clock, so no node offset applies.
export function offlineAge(ms) {
  const minutes = Math.max(0, Math.floor((Date.now() - ms) / 60000));
  const [n, unit] = minutes < 60 ? [minutes, 'unit.minutes']
    : minutes < 1440 ? [Math.floor(minutes / 60), 'unit.hours'] : [Math.floor(minutes / 1440), 'unit.days'];
  const age = minutes < 1 ? t('sensors.just_now') : lang() === 'en' ? `${n} ${t(unit)} ago` : `${n} ${t(unit)}前`;
  return `${t('offline.data')} · ${age}`;
}
