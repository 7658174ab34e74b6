// The outbox's rules that need no browser: ids and keys, which item goes next, what an answer means
// for an item, how long to wait before trying again, and the tus headers for resumable photo uploads.
// No imports and no DOM or IndexedDB, so the unit tests (tests/ui/) load it as it is; outbox.js does
// the storing and the sending.

export const CHUNK_BYTES = 256 * 1024;
export const KEEP_SENT_MS = 7 * 24 * 3600 * 1000;
export const BACKOFF_MIN_MS = 2000;
export const BACKOFF_MAX_MS = 60000;
// After the node finds a photo's SHA-256 wrong twice, a third try would only burn the person's data.
export const MAX_CHECKSUM_RESTARTS = 2;
// An upload the node lost (expired, discarded) is started again; past this something is wrong on
// the node and trying forever would only hide it.
export const MAX_GONE_RESTARTS = 3;
export const TUS_VERSION = '1.0.0';
export const UPLOADS_PATH = '/api/v1/uploads';

// States an item can be in. 'sending' is only ever true while this phone holds the send lock; a
// 'sending' found at the start of a run was cut off by a reload and is 'waiting' again.
export const STATES = ['waiting', 'sending', 'sent', 'refused', 'auth'];
const ATTENTION = new Set(['waiting', 'sending', 'auth', 'refused']);

function randomBytes(n, random) {
  const bytes = new Uint8Array(n);
  if (random) random(bytes);
  else globalThis.crypto.getRandomValues(bytes);
  return bytes;
}

function uuidText(b) {
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// RFC 9562 UUIDv7: 48-bit Unix milliseconds, version 7, variant 10, the rest random. The node takes
// it as the incident's id, so a report made offline has its final address before it is sent.
// crypto.getRandomValues works over plain HTTP too, where crypto.randomUUID does not exist.
export function uuidv7(nowMs = Date.now(), random) {
  const b = randomBytes(16, random);
  let ms = Math.max(0, Math.floor(nowMs));
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  return uuidText(b);
}

export function uuidv4(random) {
  const b = randomBytes(16, random);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  return uuidText(b);
}

export function isUuidv7(text) {
  return typeof text === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(text);
}

// The milliseconds a UUIDv7 was made at.
export function uuidv7Time(text) {
  if (!isUuidv7(text)) return null;
  return parseInt(text.slice(0, 8) + text.slice(9, 13), 16);
}

// What the node accepts as an Idempotency-Key: 1 to 200 visible ASCII characters.
export function isValidKey(key) {
  return typeof key === 'string' && key.length >= 1 && key.length <= 200 && /^[\x21-\x7e]+$/.test(key);
}

// The key of one step of an item (a photo's upload, its attachment). Derived from the item's key, so a
// resend after a lost answer repeats the same key; `gen` changes when an upload must be made anew, so
// the node does not answer the new request with the dead upload's replayed answer.
export function stepKey(itemKey, step, gen = 0) {
  return `${itemKey}.${step}.g${gen}`;
}

// Waiting time before retry number `attempt` (1 = the first retry): 2 s doubling to 60 s, with ±20 %
// jitter so phones that lost the same Wi-Fi do not all come back in the same second.
export function backoffMs(attempt, random = Math.random) {
  const n = Math.max(1, Math.floor(attempt) || 1);
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(n - 1, 16));
  return Math.min(BACKOFF_MAX_MS, Math.round(base * (0.8 + 0.4 * random())));
}

function codeOf(problem) {
  return (problem && typeof problem === 'object' && typeof problem.code === 'string' && problem.code) || '';
}

// What an answer means for an item. `phase` is the step: 'request' (the item's own POST), 'create',
// 'head', 'patch' (tus) or 'attach'. Status 0 is no answer at all (network down, timeout).
//   ok: go on · retry: keep the item, try later · auth: signed out, wait for sign-in · csrf: fetch a
//   fresh token and repeat · refuse: the node said no, a person must decide · offset: ask the node
//   where the upload stands · checksum: the node discarded the upload, start it again · gone: the
//   upload no longer exists, start it again · attach-missing: 404 on attach, the upload may be gone.
// Only answers that are the node's final word are refusals; a person then decides.
export function classify(status, problem, phase = 'request') {
  const code = codeOf(problem);
  if (!status) return 'retry';
  if (status >= 200 && status < 300) return 'ok';
  if (status === 401) return 'auth';
  // The access check refuses a stale token with 403 before anything runs; another token fixes it.
  if (status === 403 && code === 'csrf_missing') return 'csrf';
  if (status === 408 || status === 429 || status >= 500) return 'retry';
  // The first request with this key is still running on the node (its answer lost on the way back).
  if (status === 409 && code === 'still_processing') return 'retry';
  if (phase === 'patch') {
    if (status === 409) return 'offset';
    if (status === 460) return 'checksum';
  }
  if ((phase === 'patch' || phase === 'head') && (status === 404 || status === 410)) return 'gone';
  if (phase === 'attach' && status === 404) return 'attach-missing';
  // The node holds fewer bytes than the phone thought: ask where it stands and send the rest.
  if (phase === 'attach' && status === 409) return 'offset';
  return 'refuse';
}

// The error kept on an item, as the UI shows it: the status, the problem's code and params (which
// the UI turns into the person's language), and the node's own English words.
export function errorOf(status, problem) {
  const p = problem && typeof problem === 'object' ? problem : {};
  const params = p.params && typeof p.params === 'object' && !Array.isArray(p.params) ? p.params : {};
  return {
    status: status || 0,
    code: (typeof p.code === 'string' && p.code) || null,
    params,
    message: String(p.detail || p.title || ''),
  };
}

// The dictionary key that names a refusal in the person's language.
const KNOWN_REFUSALS = [400, 403, 404, 409, 413, 415, 422, 460];
export function refusalKey(status) {
  return KNOWN_REFUSALS.includes(status) ? `outbox.refused.${status}` : 'outbox.refused.other';
}

// The fields an item takes after one attempt. `progressed` says the attempt moved something forward
// (a step done, bytes acknowledged): the backoff then starts again from the shortest wait.
// `retryAfterMs` is the node's own Retry-After (429, 503): never sooner than that, at most 10 minutes.
export function afterAttempt(item, outcome, { now = Date.now(), random = Math.random, progressed = false, error = null, retryAfterMs = 0 } = {}) {
  switch (outcome) {
    case 'ok':
      return { state: 'sent', sentMs: now, progress: 1, error: null, attempts: 0, nextAttemptMs: 0 };
    case 'auth':
      return { state: 'auth', error: error || { status: 401, code: null, message: '' }, nextAttemptMs: 0 };
    case 'refuse':
      return { state: 'refused', error, nextAttemptMs: 0 };
    default: {
      const attempts = progressed ? 1 : (item.attempts || 0) + 1;
      const wait = Math.max(backoffMs(attempts, random), Math.min(Math.max(0, retryAfterMs) || 0, 600000));
      return { state: 'waiting', attempts, nextAttemptMs: now + wait, error };
    }
  }
}

export function bySeq(a, b) {
  return (a.seq ?? 0) - (b.seq ?? 0);
}

// Items are the person's own: on a shared phone nobody sends, or sees, another account's work.
export function belongsTo(item, user) {
  return !user || item.user === user;
}

// The next item to send for `user`, strictly in the order they were made: the first unfinished item
// blocks the rest (a comment on an incident reported offline must not overtake that report). Refused
// items no longer block. `force` (the network came back, a person pressed retry) skips the wait.
export function nextToSend(items, user, now = Date.now(), force = false) {
  if (!user) return { item: null, blocked: 'auth' };
  const queue = items.filter((i) => i.user === user && (i.state === 'waiting' || i.state === 'sending' || i.state === 'auth')).sort(bySeq);
  const head = queue[0];
  if (!head) return { item: null };
  if (head.state === 'auth') return { item: null, blocked: 'auth' };
  if (!force && head.nextAttemptMs && head.nextAttemptMs > now) return { item: null, waitUntil: head.nextAttemptMs };
  return { item: head };
}

// The header badge: everything that still needs the phone or a person (sent items do not).
export function attentionCount(items, user) {
  return items.filter((i) => belongsTo(i, user) && ATTENTION.has(i.state)).length;
}

// Whether to ask for a sign-in: an item was refused for want of one, or nobody is signed in while
// work waits.
export function needsSignIn(items, user) {
  if (!user) return items.some((i) => i.state !== 'sent' && i.state !== 'refused');
  return items.some((i) => i.user === user && i.state === 'auth');
}

// Sent items are listed for a week, then dropped.
export function expiredIds(items, now = Date.now()) {
  return items.filter((i) => i.state === 'sent' && i.sentMs && i.sentMs < now - KEEP_SENT_MS).map((i) => i.id);
}

// Fields a retry asked for by a person sets. A refusal was the node's final answer, kept under the
// old key for a day, so the retry needs a new key to be heard; nothing was made under the old key, so
// a new one cannot make anything twice (a report's incident id stays, which guards the report).
export function retryFields(item, newKey) {
  const fields = { state: 'waiting', attempts: 0, nextAttemptMs: 0, error: null };
  if (item.state === 'refused' && item.error && item.error.status) {
    fields.idempotencyKey = newKey;
    fields.previousKeys = [...(item.previousKeys || []), item.idempotencyKey];
    fields.photos = (item.photos || []).map((p) => ({ ...p, restarts: 0, gone: 0 }));
  }
  return fields;
}

// Progress of an item from 0 to 1: bytes the node confirmed, plus bytes in flight, over the item's
// photo bytes. An item without photos is done when its request is.
export function itemProgress(item, inflight = 0) {
  if (item.state === 'sent') return 1;
  const photos = item.photos || [];
  const total = photos.reduce((s, p) => s + (p.size || 0), 0);
  if (!total) return item.mainDone ? 1 : 0;
  const done = photos.reduce((s, p) => s + (p.attached ? p.size : Math.min(p.offset || 0, p.size || 0)), 0);
  return Math.max(0, Math.min(1, (done + Math.max(0, inflight)) / total));
}

export function photoProgress(photo, inflight = 0) {
  if (photo.attached) return 1;
  if (!photo.size) return 0;
  return Math.max(0, Math.min(1, ((photo.offset || 0) + Math.max(0, inflight)) / photo.size));
}

// Standard base64 of a string's UTF-8 bytes (file names are often Chinese) or of bytes.
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
export function base64(input) {
  const bytes = typeof input === 'string' ? new TextEncoder().encode(input) : input;
  let out = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63];
    out += i + 1 < bytes.length ? B64[(n >> 6) & 63] : '=';
    out += i + 2 < bytes.length ? B64[n & 63] : '=';
  }
  return out;
}

// Decodes base64 to UTF-8 text; null when it is not base64.
export function unbase64(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 === 1) return null;
  const clean = text.replace(/=+$/, '');
  const bytes = [];
  let bits = 0;
  let value = 0;
  for (const c of clean) {
    value = (value << 6) | B64.indexOf(c);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((value >> bits) & 0xff);
    }
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(bytes));
  } catch (_) {
    return null;
  }
}

// tus Upload-Metadata: comma-separated "key base64(value)" pairs.
export function uploadMetadata({ name, type, sha256 }) {
  return [['filename', name || 'photo.jpg'], ['content_type', type || 'application/octet-stream'], ['sha256', sha256]]
    .map(([k, v]) => `${k} ${base64(String(v))}`).join(',');
}

export function parseMetadata(header) {
  const out = {};
  if (typeof header !== 'string') return out;
  for (const pair of header.split(',')) {
    const [key, value = ''] = pair.trim().split(' ');
    if (!key) continue;
    const decoded = value === '' ? '' : unbase64(value);
    if (decoded !== null) out[key] = decoded;
  }
  return out;
}

export function createHeaders({ size, name, type, sha256, csrf, key }) {
  const headers = {
    'Tus-Resumable': TUS_VERSION,
    'Upload-Length': String(size),
    'Upload-Metadata': uploadMetadata({ name, type, sha256 }),
    'Idempotency-Key': key,
  };
  if (csrf) headers['X-CSRF-Token'] = csrf;
  return headers;
}

export function patchHeaders({ offset, csrf }) {
  const headers = {
    'Tus-Resumable': TUS_VERSION,
    'Content-Type': 'application/offset+octet-stream',
    'Upload-Offset': String(offset),
  };
  if (csrf) headers['X-CSRF-Token'] = csrf;
  return headers;
}

// Retry-After in seconds (the node never sends a date) as milliseconds; 0 when absent or odd.
export function retryAfterMs(value) {
  const n = parseOffset(value);
  return n === null ? 0 : n * 1000;
}

// Upload-Offset and Upload-Length: a non-negative integer in plain digits, or null.
export function parseOffset(value) {
  if (typeof value !== 'string' || !/^\d{1,16}$/.test(value.trim())) return null;
  const n = Number(value.trim());
  return Number.isSafeInteger(n) ? n : null;
}

// The path of an upload from the Location the node answered (absolute or relative). Only this node's
// own upload resources are followed: a Location elsewhere would send the photo elsewhere.
export function uploadPath(location, origin) {
  if (typeof location !== 'string' || !location) return null;
  let url;
  try {
    url = new URL(location, origin || 'http://node.invalid');
  } catch (_) {
    return null;
  }
  if (origin && url.origin !== new URL(origin).origin) return null;
  if (!url.pathname.startsWith(`${UPLOADS_PATH}/`)) return null;
  const id = url.pathname.slice(UPLOADS_PATH.length + 1);
  if (!id || id.includes('/')) return null;
  return url.pathname;
}

export function uploadId(path) {
  return typeof path === 'string' ? decodeURIComponent(path.slice(path.lastIndexOf('/') + 1)) : null;
}

// The byte range of the next PATCH.
export function nextChunk(offset, size, chunk = CHUNK_BYTES) {
  return [offset, Math.min(size, offset + chunk)];
}

// A photo whose upload is lost or discarded starts again as a new upload under a new key.
export function restartedPhoto(photo) {
  return { ...photo, uploadUrl: null, offset: 0, gen: (photo.gen || 0) + 1 };
}
