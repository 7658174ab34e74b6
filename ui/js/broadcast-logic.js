// The broadcast page's rules that need no browser: what the node would speak, how zones group by
// village, what an output's health adds up to, whether a typed confirmation matches, and the exact
// order body. No imports, so the unit tests (tests/ui/) load it as it is.

export const LEVELS = ['red', 'orange', 'yellow', 'blue', 'routine'];
export const MODES = ['live', 'test', 'exercise'];
export const ACTIVE = ['requested', 'approved', 'playing'];
export const HISTORY = ['finished', 'cancelled', 'refused'];
export const HEALTH = ['ok', 'error', 'offline', 'unknown'];
export const MAX_TEXT = 2000;
export const MAX_REPEAT = 10;
// The node refuses longer audio messages (src/pa/audio.rs); the recorder stops itself here.
export const MAX_RECORDING_MS = 15 * 60 * 1000;

export function isActive(state) {
  return ACTIVE.includes(state);
}

export function isLive(mode) {
  return mode === 'live';
}

// What the node speaks for a text, as src/broadcast/mod.rs `spoken_text` writes it: test and
// exercise broadcasts say so before and after, so nobody mistakes one for the real thing.
export function spokenText(mode, text) {
  // The message's own closing stop is dropped, as the node does, so the next sentence does not double it.
  const body = text.trimEnd().replace(/[。.；;，,]+$/u, '');
  if (mode === 'test') return `测试，这是测试广播。${body}。测试广播结束。`;
  if (mode === 'exercise') return `演练，这是演练广播。${body}。演练广播结束。`;
  return text;
}

// Characters as the node counts them (Unicode scalar values), not UTF-16 units.
export function charCount(text) {
  return [...(text || '')].length;
}

// The outputs a broadcast in this mode reaches: live every output of the zone, test and exercise
// only the monitor outputs marked `test`.
export function reachable(zone, mode) {
  const outputs = zone.outputs || [];
  return isLive(mode) ? outputs : outputs.filter((o) => o.test);
}

// Zones grouped by their village (area code), groups and zones in the node's configured order.
export function groupZones(zones) {
  const groups = new Map();
  for (const zone of zones || []) {
    const area = zone.area || '';
    if (!groups.has(area)) groups.set(area, []);
    groups.get(area).push(zone);
  }
  return [...groups].map(([area, list]) => ({ area, zones: list }));
}

// How many outputs are in each health state: { total, ok, error, offline, unknown }.
export function healthCounts(outputs) {
  const counts = { total: 0, ok: 0, error: 0, offline: 0, unknown: 0 };
  for (const o of outputs || []) {
    const status = HEALTH.includes(o.health?.status) ? o.health.status : 'unknown';
    counts[status] += 1;
    counts.total += 1;
  }
  return counts;
}

// The health of a zone's outputs as words: "2/2 正常", or "1/2 正常 · 1 离线". `name` gives the
// word for a status (the page passes i18n).
export function healthText(counts, name) {
  if (counts.total === 0) return '';
  const parts = [];
  if (counts.ok > 0) parts.push(`${counts.ok}/${counts.total} ${name('ok')}`);
  for (const status of ['offline', 'error', 'unknown']) {
    if (counts[status] > 0) parts.push(`${counts[status]} ${name(status)}`);
  }
  return parts.join(' · ');
}

// Whether what the person typed is the number of zones. Digits typed with a Chinese input method
// come full-width (３); they count the same.
export function confirmMatches(input, expected) {
  const ascii = String(input ?? '')
    .trim()
    .replace(/[０-９]/g, (d) => String.fromCharCode(d.charCodeAt(0) - 0xff10 + 48));
  return /^[0-9]+$/.test(ascii) && Number(ascii) === expected && expected > 0;
}

// What stops an order before it is sent: the field to point at, or null.
export function orderProblem({ text, zones, hasAudio, repeat }) {
  if (!zones || zones.length === 0) return 'zones';
  if (!hasAudio && !(text || '').trim()) return 'text';
  if (charCount((text || '').trim()) > MAX_TEXT) return 'text_long';
  if (!Number.isInteger(repeat) || repeat < 1 || repeat > MAX_REPEAT) return 'repeat';
  return null;
}

// Times of day for a routine programme, as typed ("07:30, 18:00" or with Chinese commas): the
// valid ones, sorted and without repeats, and the ones that are not times.
export function parseSchedule(typed) {
  const times = [];
  const bad = [];
  for (const part of (typed || '').split(/[,，、\s]+/u)) {
    if (!part) continue;
    const m = /^(\d{1,2})[:：](\d{2})$/u.exec(part);
    if (!m || Number(m[1]) > 23 || Number(m[2]) > 59) {
      bad.push(part);
      continue;
    }
    const time = `${m[1].padStart(2, '0')}:${m[2]}`;
    if (!times.includes(time)) times.push(time);
  }
  return { times: times.sort(), bad };
}

// The POST /api/v1/broadcasts body, exactly: text left out when an audio message follows (the node
// then waits for it instead of speaking anything), warning and start_at only when given.
export function orderBody({ text, zones, mode, level, repeat, warning, startAt, hasAudio, schedule }) {
  const body = {};
  const trimmed = (text || '').trim();
  if (!hasAudio && trimmed) body.text = trimmed;
  body.zones = [...zones];
  body.mode = mode;
  body.level = level;
  body.repeat = repeat;
  if (warning) body.warning = warning;
  if (startAt) body.start_at = startAt;
  if (level === 'routine' && schedule && schedule.length) body.schedule = [...schedule];
  return body;
}

// Starting from an issued warning: its headline and instruction as the text, its level, its id.
// A test or exercise warning starts a test or exercise broadcast; nothing here ever picks live.
export function warningPrefill(w) {
  const headline = (w.headline || '').trim();
  const instruction = (w.instruction || '').trim();
  let text = headline;
  if (instruction) text = headline ? `${headline}${/[。！!？?.，,；;：:]$/.test(headline) ? '' : '。'}${instruction}` : instruction;
  const prefill = { text: [...text].slice(0, MAX_TEXT).join(''), warning: w.id };
  if (LEVELS.includes(w.level)) prefill.level = w.level;
  if (w.status === 'test' || w.status === 'exercise') prefill.mode = w.status;
  return prefill;
}

// Recording formats the node accepts, best first; the browser's first supported one is used.
export const RECORDER_TYPES = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/webm', 'audio/ogg'];

export function pickRecorderType(isSupported) {
  return RECORDER_TYPES.find((type) => {
    try { return isSupported(type); } catch (_) { return false; }
  }) || null;
}

// The upload's file name by the recorder's type: message.ogg or message.webm.
export function recordingName(mimeType) {
  return /ogg/i.test(mimeType || '') ? 'message.ogg' : 'message.webm';
}

// Whether a chosen file looks like audio the node takes (WAV, MP3, Ogg/Opus, WebM); the node checks
// the content itself, this only catches a wrong file before an order is made.
export function acceptableAudio(file) {
  const type = (file.type || '').toLowerCase();
  if (/^audio\/(wav|x-wav|wave|vnd\.wave|mpeg|mp3|ogg|opus|webm)/.test(type) || type === 'video/webm') return true;
  return /\.(wav|mp3|ogg|oga|opus|webm)$/i.test(file.name || '');
}

// m:ss for a recording's length.
export function clock(ms) {
  const s = Math.max(0, Math.floor((ms || 0) / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

// The list split as the page shows it: active ones (newest first), then the history.
export function splitList(broadcasts) {
  const byNewest = (a, b) => (b.updated_ms || 0) - (a.updated_ms || 0);
  const list = broadcasts || [];
  return {
    active: list.filter((b) => isActive(b.state)).sort(byNewest),
    history: list.filter((b) => !isActive(b.state)).sort(byNewest),
  };
}

// Receipts in a stable order for the table: by zone, then output.
export function sortReceipts(receipts) {
  return [...(receipts || [])].sort((a, b) => (a.zone === b.zone ? String(a.output).localeCompare(String(b.output)) : String(a.zone).localeCompare(String(b.zone))));
}

// Where an order came from when the county's emergency-broadcast platform (应急广播平台) sent it:
// the node keeps the platform's EBMID, the package's EBDID and the sender's EBRID in the `request`
// transition it signs as "system" (src/ebd/receive.rs `origin`). { ebmId, src, ebdid }, or null for
// an order a person or a rule made.
export function platformOrigin(broadcast) {
  const request = (broadcast?.transitions || []).find((tr) => tr.action === 'request');
  const data = request?.actor === 'system' ? request.data || {} : {};
  if (typeof data.ebd_ebm_id !== 'string' || !data.ebd_ebm_id) return null;
  return { ebmId: data.ebd_ebm_id, src: data.ebd_src || null, ebdid: data.ebd_ebdid || null };
}

// What a correction says, as src/broadcast/mod.rs `correction_text` writes it. The person's note is
// kept with the correction in the record, never spoken: a correction plays without a second
// person, so it may only say what the node writes for it.
export function correctionText(original) {
  const chars = [...(original || '')];
  const quoted = chars.slice(0, 60).join('');
  const ellipsis = chars.length > 60 ? '……' : '';
  return `更正：刚才播出的广播“${quoted}${ellipsis}”有误，已经撤销，请不要按该广播行动。`;
}

// A datetime-local value as RFC 3339 in UTC to the second, which the node parses; empty stays empty.
export function startAtFrom(localValue) {
  if (!localValue) return null;
  const d = new Date(localValue);
  if (Number.isNaN(d.getTime())) return undefined;
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}
