// The outbox. Everything a person does in the field (a report with its photos, a comment, a workflow
// step, a rating, photos added to an incident) is saved on the phone first and sent from here, one
// item at a time in the order it was made, until the node has it. Photos go up in resumable pieces
// (tus), so a dropped Wi-Fi resumes where it stopped instead of starting the photo again; every
// request carries an Idempotency-Key, so a resend after a lost answer makes nothing twice. Items and
// photo bytes live in IndexedDB (idb.js) and survive reloads, a closed browser and a restarted phone.
// The decisions that need no browser (order, backoff, what an answer means) are in outbox-logic.js.
//
// A 401 stops everything until the person signs in again; a refusal (4xx) is kept with the node's
// reason for the person to retry or discard; anything else (no network, timeouts, 5xx, 429) is tried
// again later, never given up.
import * as logic from './outbox-logic.js';
import { run, req, getBlob } from './idb.js';
import { getCsrf, setCsrf } from './api.js';
import { currentUser, ensureCsrf, expired, onChange as onSessionChange } from './session.js';
import { noteReachable } from './net.js';
import { hashBlob } from './photo.js';

const REQUEST_TIMEOUT_MS = 30000;
const HEAD_TIMEOUT_MS = 20000;
// One 256 KiB piece: 5 s at 400 kbit/s; two minutes leaves room for much worse Wi-Fi.
const PATCH_TIMEOUT_MS = 120000;
const POLL_MS = 30000;
const LOCKED_RETRY_MS = 5000;
const LOCK_NAME = 'township-outbox';
const LEASE_KEY = 'township.outbox.lease';
const LEASE_MS = 30000;
const TAB = logic.uuidv4();
const LOCKED = Symbol('locked');
const STOPPED = { outcome: 'stopped' };
const DONE_STATES = new Set(['sent', 'refused', 'auth']);

let items = new Map(); // seq → item, the phone's copy of the items store
let loading = null;
const listeners = new Set();
let sending = null; // { id, seq } of the item this tab is sending now
let abortCurrent = null; // stops the request in flight (discarding the item being sent)
let discarding = false; // that stop is the person's doing, not a sign the network is down
let inflight = null; // { id, index, bytes } of the piece the browser is sending
let running = null;
let again = false;
let againForce = false;
let timer = null;
let lastNotify = 0;
let notifyTimer = null;
let started = false;
const channel = typeof BroadcastChannel !== 'undefined' ? new BroadcastChannel('township-outbox') : null;

// The last person signed in on this page: work done after their session ran out still queues under
// them, and waits for their sign-in.
let lastUser = null;

function username() {
  const user = currentUser()?.username || null;
  if (user) lastUser = user;
  return user;
}

function all() {
  return [...items.values()];
}

function find(id) {
  return all().find((i) => i.id === id) || null;
}

// Counts changes this tab made to `items`; a reload that overlapped one reads again rather than
// put back a copy older than the change.
let changes = 0;

async function reload() {
  let stored;
  for (let tries = 0; ; tries++) {
    const mark = changes;
    stored = await run('items', 'readonly', (t) => req(t.objectStore('items').getAll()));
    if (mark === changes || tries >= 5) break;
  }
  const next = new Map();
  for (const item of stored) {
    // The item being sent here is ahead of its stored copy; keep ours.
    const mine = sending && sending.seq === item.seq ? items.get(item.seq) : null;
    next.set(item.seq, mine || item);
  }
  items = next;
}

function ensureLoaded() {
  if (!loading) loading = reload().catch(() => {});
  return loading;
}

// Writes the item back unless it was discarded meanwhile (in this tab or another); false then.
async function save(item) {
  const kept = await run('items', 'readwrite', async (t) => {
    const store = t.objectStore('items');
    if (!(await req(store.get(item.seq)))) return false;
    store.put(item);
    return true;
  });
  if (kept) items.set(item.seq, item);
  else items.delete(item.seq);
  changes++;
  return kept;
}

function deleteBlobs(keys) {
  if (!keys.length) return Promise.resolve();
  return run('blobs', 'readwrite', (t) => {
    for (const key of keys) t.objectStore('blobs').delete(key);
  }).catch(() => {});
}

function notify(progressOnly = false) {
  const now = Date.now();
  if (progressOnly && now - lastNotify < 250) {
    if (!notifyTimer) notifyTimer = setTimeout(() => { notifyTimer = null; notify(); }, 250);
    return;
  }
  lastNotify = now;
  for (const fn of listeners) {
    try { fn(); } catch (_) { /* one listener must not stop the others */ }
  }
}

function broadcast() {
  try { channel?.postMessage({ type: 'changed' }); } catch (_) { /* no other tabs to tell */ }
}

// An item as pages see it: a copy with its progress worked out.
function view(item) {
  const bytes = inflight && inflight.id === item.id ? inflight : null;
  return {
    ...item,
    progress: logic.itemProgress(item, bytes ? bytes.bytes : 0),
    photos: (item.photos || []).map((p, index) => ({
      ...p,
      progress: logic.photoProgress(p, bytes && bytes.index === index ? bytes.bytes : 0),
    })),
  };
}

export function onChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

// This person's items in the order they are sent.
export async function list() {
  await ensureLoaded();
  const user = username();
  return all().filter((i) => logic.belongsTo(i, user)).sort(logic.bySeq).map(view);
}

export async function get(id) {
  await ensureLoaded();
  const item = find(id);
  return item ? view(item) : null;
}

// Unfinished items of other accounts on this phone (not shown, only counted).
export function othersCount() {
  const user = username();
  return user ? all().filter((i) => i.user !== user && i.state !== 'sent').length : 0;
}

// Items needing the phone or a person: waiting, sending, refused, waiting for a sign-in.
export function count() {
  return logic.attentionCount(all(), username());
}

export function needsSignIn() {
  return logic.needsSignIn(all(), username());
}

// This person's unfinished items about one incident, for its page.
export function forIncident(incidentId) {
  const user = username();
  return all().filter((i) => i.user === user && i.incidentId === incidentId && i.state !== 'sent').sort(logic.bySeq).map(view);
}

function askPersist() {
  try {
    if (localStorage.getItem('township.persist-asked')) return;
    localStorage.setItem('township.persist-asked', '1');
  } catch (_) {
    return;
  }
  // Without it the browser may clear the outbox when the phone runs short of space.
  if (navigator.storage && navigator.storage.persist) navigator.storage.persist().catch(() => {});
}

// Background Sync: the browser wakes the service worker when the network is back, which tells an
// open page to send (sw.js). Where it does not exist, the online event and the timer do the same.
function registerSync() {
  if (!('serviceWorker' in navigator) || !navigator.serviceWorker.controller) return;
  navigator.serviceWorker.ready.then((reg) => (reg.sync ? reg.sync.register('outbox') : null)).catch(() => {});
}

// Queues something to send. `input`: { kind, label, method, path, body, incidentClientId, incidentId,
// photos: [{ blob, name, type, sha256? }], draftUser? }. The draft of `draftUser` is removed in the
// same transaction, so a report is never both queued and a draft. Resolves once it is stored.
export async function enqueue(input) {
  await ensureLoaded();
  const user = input.user || username() || lastUser;
  if (!user) throw new Error('nobody is signed in');
  const id = logic.uuidv4();
  const photos = [];
  const blobs = [];
  for (const [index, p] of (input.photos || []).entries()) {
    const blobKey = `item:${id}:${index}`;
    photos.push({
      blobKey,
      name: p.name || `photo-${index + 1}.jpg`,
      type: p.type || p.blob.type || 'application/octet-stream',
      size: p.blob.size,
      sha256: p.sha256 || await hashBlob(p.blob),
      uploadUrl: null,
      offset: 0,
      attached: false,
      gen: 0,
      restarts: 0,
      gone: 0,
    });
    blobs.push({ key: blobKey, blob: p.blob });
  }
  const item = {
    id,
    kind: input.kind,
    label: input.label || '',
    method: input.method || null,
    path: input.path || null,
    body: input.body ?? null,
    idempotencyKey: logic.uuidv4(),
    incidentClientId: input.incidentClientId || null,
    incidentId: input.incidentId || input.incidentClientId || null,
    user,
    photos,
    state: 'waiting',
    progress: 0,
    error: null,
    attempts: 0,
    nextAttemptMs: 0,
    mainDone: !input.method,
    createdMs: Date.now(),
    sentMs: null,
    result: null,
  };
  await run(['items', 'blobs', 'drafts'], 'readwrite', async (t) => {
    for (const b of blobs) t.objectStore('blobs').put(b);
    if (input.draftUser) {
      const draft = await req(t.objectStore('drafts').get(input.draftUser));
      for (const p of draft?.photos || []) t.objectStore('blobs').delete(p.blobKey);
      t.objectStore('drafts').delete(input.draftUser);
    }
    item.seq = await req(t.objectStore('items').add(item));
  });
  items.set(item.seq, item);
  changes++;
  askPersist();
  registerSync();
  notify();
  broadcast();
  // Something new from the person is a good moment to try again at once, whatever the backoff said.
  flush({ force: true });
  return view(item);
}

// Resolves with the item once it is sent, refused or waiting for a sign-in, or after `ms` with it as
// it is then (null if it was discarded).
export function settle(id, ms) {
  return new Promise((resolve) => {
    let finished = false;
    let off = () => {};
    const done = () => {
      if (finished) return;
      finished = true;
      clearTimeout(limit);
      off();
      const item = find(id);
      resolve(item ? view(item) : null);
    };
    const check = () => {
      const item = find(id);
      if (!item || DONE_STATES.has(item.state)) done();
    };
    const limit = setTimeout(done, ms);
    off = onChange(check);
    check();
  });
}

export async function retry(id) {
  await ensureLoaded();
  const item = find(id);
  if (item && (item.state === 'waiting' || item.state === 'refused' || item.state === 'auth')) {
    Object.assign(item, logic.retryFields(item, logic.uuidv4()));
    await save(item);
    notify();
    broadcast();
  }
  return flush({ force: true });
}

// Removes an item and its photos from the phone, and its unfinished uploads from the node.
export async function discard(id) {
  await ensureLoaded();
  const item = find(id);
  if (!item) return;
  if (sending && sending.id === id && abortCurrent) {
    discarding = true;
    abortCurrent();
  }
  const uploads = item.photos.filter((p) => p.uploadUrl && !p.attached).map((p) => p.uploadUrl);
  await run(['items', 'blobs'], 'readwrite', (t) => {
    t.objectStore('items').delete(item.seq);
    for (const p of item.photos) t.objectStore('blobs').delete(p.blobKey);
  });
  items.delete(item.seq);
  changes++;
  notify();
  broadcast();
  const csrf = getCsrf();
  // Best effort: an upload nobody finishes expires on the node after a day anyway.
  for (const path of uploads) {
    if (csrf) {
      fetch(path, { method: 'DELETE', headers: { 'Tus-Resumable': logic.TUS_VERSION, 'X-CSRF-Token': csrf }, credentials: 'same-origin' }).catch(() => {});
    }
  }
  flush({ force: false });
}

// A refused report goes back into the report form (as the person's draft) to be corrected and
// queued again under a new incident id. False when a draft already exists (it would be lost).
export async function editReport(id) {
  await ensureLoaded();
  const item = find(id);
  if (!item || item.kind !== 'report' || item.mainDone || item.state !== 'refused') return false;
  const body = item.body || {};
  const moved = await run(['items', 'drafts'], 'readwrite', async (t) => {
    if (await req(t.objectStore('drafts').get(item.user))) return false;
    t.objectStore('drafts').put({
      user: item.user,
      fields: {
        category: body.category || '',
        title: body.title || '',
        description: body.description || '',
        area: body.area || '',
        place: body.place || '',
        location: body.location || null,
        keepLocation: false,
      },
      // The photos' bytes stay where they are and now belong to the draft.
      photos: item.photos.map((p) => ({ blobKey: p.blobKey, name: p.name, type: p.type, size: p.size, gps: null })),
      savedMs: Date.now(),
    });
    t.objectStore('items').delete(item.seq);
    return true;
  });
  if (moved) {
    items.delete(item.seq);
    changes++;
    notify();
    broadcast();
  }
  return moved;
}

// --- Sending ---------------------------------------------------------------------------------------

async function http(method, path, { json, headers = {}, key, timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
  const controller = new AbortController();
  const limit = setTimeout(() => controller.abort(), timeoutMs);
  abortCurrent = () => controller.abort();
  const h = { Accept: 'application/json', ...headers };
  if (json !== undefined) h['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && getCsrf()) h['X-CSRF-Token'] = getCsrf();
  if (key) h['Idempotency-Key'] = key;
  try {
    const response = await fetch(path, {
      method,
      headers: h,
      body: json === undefined ? undefined : JSON.stringify(json),
      credentials: 'same-origin',
      cache: 'no-store',
      signal: controller.signal,
    });
    let data = null;
    if (method !== 'HEAD') {
      const text = await response.text();
      try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    }
    noteReachable(true);
    return { status: response.status, data, header: (name) => response.headers.get(name) };
  } catch (_) {
    if (!discarding) noteReachable(false);
    discarding = false;
    return { status: 0, data: null, header: () => null };
  } finally {
    clearTimeout(limit);
    abortCurrent = null;
  }
}

// One tus PATCH through XMLHttpRequest, the one API that reports upload progress.
function patch(path, chunk, offset, onLoaded) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    let settled = false;
    const done = (status) => {
      if (settled) return;
      settled = true;
      abortCurrent = null;
      let data = null;
      try { data = status && xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch (_) { data = null; }
      if (!discarding) noteReachable(status !== 0);
      discarding = false;
      resolve({ status, data, header: (name) => (status ? xhr.getResponseHeader(name) : null) });
    };
    xhr.open('PATCH', path);
    for (const [k, v] of Object.entries(logic.patchHeaders({ offset, csrf: getCsrf() }))) xhr.setRequestHeader(k, v);
    xhr.timeout = PATCH_TIMEOUT_MS;
    xhr.upload.onprogress = (e) => onLoaded(e.loaded);
    xhr.onload = () => done(xhr.status);
    xhr.onerror = () => done(0);
    xhr.ontimeout = () => done(0);
    xhr.onabort = () => done(0);
    abortCurrent = () => xhr.abort();
    xhr.send(chunk);
  });
}

function fail(outcome, r) {
  return { outcome, error: logic.errorOf(r.status, r.data), retryAfterMs: logic.retryAfterMs(r.header('Retry-After')) };
}

// The token to send with. Fetching one also tells whether the session still stands.
async function token() {
  let csrf = null;
  try {
    csrf = await ensureCsrf();
  } catch (_) {
    return { outcome: 'retry', error: { status: 0, code: null, message: '' } };
  }
  if (!currentUser()) return { outcome: 'auth' };
  if (!csrf) return { outcome: 'retry', error: { status: 0, code: null, message: '' } };
  return null;
}

// An upload to begin again from nothing, at most so often for each reason.
function restart(photo, reason) {
  if (reason === 'checksum') {
    photo.restarts = (photo.restarts || 0) + 1;
    if (photo.restarts > logic.MAX_CHECKSUM_RESTARTS) return { outcome: 'refuse', error: { status: 460, code: 'checksum', message: '' } };
  } else {
    photo.gone = (photo.gone || 0) + 1;
    if (photo.gone > logic.MAX_GONE_RESTARTS) return { outcome: 'refuse', error: { status: 404, code: 'upload_gone', message: '' } };
  }
  Object.assign(photo, logic.restartedPhoto(photo));
  return null;
}

async function sendPhoto(item, index, progressed) {
  const photo = item.photos[index];
  const blob = await getBlob(photo.blobKey);
  if (!blob) return { outcome: 'refuse', error: { status: 0, code: 'photo_missing', message: '' } };
  // Whether photo.offset is the node's, confirmed during this attempt. After a reload or a broken
  // connection it is only what the phone last heard: ask the node (HEAD) before sending more.
  let known = false;
  for (let step = 0; step < 64; step++) {
    if (!photo.uploadUrl) {
      const r = await http('POST', logic.UPLOADS_PATH, {
        headers: logic.createHeaders({
          size: photo.size,
          name: photo.name,
          type: photo.type,
          sha256: photo.sha256,
          csrf: getCsrf(),
          key: logic.stepKey(item.idempotencyKey, `p${index}`, photo.gen || 0),
        }),
      });
      const outcome = logic.classify(r.status, r.data, 'create');
      if (outcome !== 'ok') return fail(outcome, r);
      const fromHeader = logic.uploadPath(r.header('Location'), location.origin);
      const fromBody = r.data && r.data.id ? logic.uploadPath(`${logic.UPLOADS_PATH}/${encodeURIComponent(r.data.id)}`, location.origin) : null;
      const path = fromHeader || fromBody;
      if (!path) return { outcome: 'retry', error: { status: r.status, code: 'no_location', message: '' } };
      photo.uploadUrl = path;
      photo.offset = 0;
      // A replayed answer (the first was lost on the way back) is from before any bytes were sent;
      // the node knows better where the upload stands now.
      known = Boolean(fromHeader) && r.header('Idempotent-Replayed') !== 'true';
      if (known) photo.offset = logic.parseOffset(r.header('Upload-Offset') || '0') ?? 0;
      if (!(await save(item))) return STOPPED;
      progressed();
      notify();
    }
    if (!known) {
      const r = await http('HEAD', photo.uploadUrl, { headers: { 'Tus-Resumable': logic.TUS_VERSION }, timeoutMs: HEAD_TIMEOUT_MS });
      const outcome = logic.classify(r.status, null, 'head');
      const offset = outcome === 'ok' ? logic.parseOffset(r.header('Upload-Offset')) : null;
      if (outcome === 'gone' || (outcome === 'ok' && (offset === null || offset > photo.size))) {
        const refused = restart(photo, 'gone');
        if (refused) return refused;
        if (!(await save(item))) return STOPPED;
        continue;
      }
      if (outcome !== 'ok') return fail(outcome, r);
      photo.offset = offset;
      known = true;
      if (!(await save(item))) return STOPPED;
      notify();
    }
    while (photo.offset < photo.size) {
      const [start, end] = logic.nextChunk(photo.offset, photo.size);
      const r = await patch(photo.uploadUrl, blob.slice(start, end), start, (bytes) => {
        inflight = { id: item.id, index, bytes };
        notify(true);
      });
      inflight = null;
      const outcome = logic.classify(r.status, r.data, 'patch');
      if (outcome === 'ok') {
        const next = logic.parseOffset(r.header('Upload-Offset'));
        if (next === null || next <= start || next > photo.size) {
          known = false;
          break;
        }
        photo.offset = next;
        progressed();
        if (!(await save(item))) return STOPPED;
        notify();
        continue;
      }
      if (outcome === 'offset') {
        known = false;
        break;
      }
      if (outcome === 'checksum' || outcome === 'gone') {
        const refused = restart(photo, outcome);
        if (refused) return refused;
        if (!(await save(item))) return STOPPED;
        known = false;
        break;
      }
      return fail(outcome, r);
    }
    if (!photo.uploadUrl || !known || photo.offset < photo.size) continue;
    const r = await http('POST', `/api/v1/incidents/${encodeURIComponent(item.incidentId)}/attachments`, {
      json: { upload: logic.uploadId(photo.uploadUrl) },
      key: logic.stepKey(item.idempotencyKey, `a${index}`, photo.gen || 0),
    });
    const outcome = logic.classify(r.status, r.data, 'attach');
    if (outcome === 'offset') {
      known = false;
      continue;
    }
    if (outcome === 'ok') {
      photo.attached = true;
      photo.offset = photo.size;
      if (!(await save(item))) return STOPPED;
      // The bytes are on the node now; the phone's copy only takes room.
      await deleteBlobs([photo.blobKey]);
      progressed();
      notify();
      return { outcome: 'ok' };
    }
    if (outcome === 'attach-missing') {
      // Either the incident or the upload is unknown; only the upload can be helped.
      const h = await http('HEAD', photo.uploadUrl, { headers: { 'Tus-Resumable': logic.TUS_VERSION }, timeoutMs: HEAD_TIMEOUT_MS });
      if (h.status === 404 || h.status === 410) {
        const refused = restart(photo, 'gone');
        if (refused) return refused;
        if (!(await save(item))) return STOPPED;
        known = false;
        continue;
      }
      if (!h.status) return fail('retry', h);
      return fail('refuse', r);
    }
    return fail(outcome, r);
  }
  return { outcome: 'retry', error: { status: 0, code: null, message: '' } };
}

async function send(item, progressed) {
  const missing = await token();
  if (missing) return missing;
  if (currentUser().username !== item.user) return { outcome: 'retry', error: null };
  if (item.method && !item.mainDone) {
    const r = await http(item.method, item.path, { json: item.body ?? undefined, key: item.idempotencyKey });
    const outcome = logic.classify(r.status, r.data, 'request');
    if (outcome !== 'ok') return fail(outcome, r);
    item.mainDone = true;
    item.result = { status: r.status, id: r.data && r.data.id ? String(r.data.id) : null };
    // The node takes the phone's id; should an older node choose its own, photos follow that one.
    if (item.kind === 'report' && item.result.id) item.incidentId = item.result.id;
    if (!(await save(item))) return STOPPED;
    progressed();
    notify();
  }
  for (let index = 0; index < item.photos.length; index++) {
    if (item.photos[index].attached) continue;
    const result = await sendPhoto(item, index, progressed);
    if (result.outcome !== 'ok') return result;
  }
  return { outcome: 'ok' };
}

// One attempt at one item. True when the queue must stop here (waiting, or signed out).
async function attempt(item) {
  item.state = 'sending';
  if (!(await save(item))) return false;
  notify();
  broadcast();
  let progressed = false;
  const moved = () => { progressed = true; };
  let result;
  sending = { id: item.id, seq: item.seq };
  try {
    result = await send(item, moved);
    if (result.outcome === 'csrf') {
      // A stale token (the node restarted the session): one more try with a fresh one.
      setCsrf(null);
      result = await send(item, moved);
      if (result.outcome === 'csrf') result = { outcome: 'retry', error: result.error };
    }
  } catch (error) {
    result = { outcome: 'retry', error: { status: 0, code: null, message: String(error?.message || error) } };
  } finally {
    sending = null;
    inflight = null;
  }
  if (result.outcome === 'stopped' || !find(item.id)) return false;
  Object.assign(item, logic.afterAttempt(item, result.outcome, { progressed, error: result.error || null, retryAfterMs: result.retryAfterMs || 0 }));
  const kept = await save(item);
  if (kept && item.state === 'sent') await deleteBlobs(item.photos.map((p) => p.blobKey));
  notify();
  broadcast();
  if (!kept) return false;
  if (item.state === 'auth') {
    expired();
    return true;
  }
  if (item.state === 'waiting') {
    // Only a lost network is worth waking for; a busy node is waited out with the backoff.
    if (!item.error || !item.error.status) registerSync();
    return true;
  }
  return false;
}

async function prune() {
  const ids = new Set(logic.expiredIds(all()));
  if (!ids.size) return;
  const old = all().filter((i) => ids.has(i.id));
  await run(['items', 'blobs'], 'readwrite', (t) => {
    for (const item of old) {
      t.objectStore('items').delete(item.seq);
      for (const p of item.photos) t.objectStore('blobs').delete(p.blobKey);
    }
  });
  for (const item of old) items.delete(item.seq);
  changes++;
}

async function drain(force) {
  await reload();
  // Under the lock nobody else is sending: a 'sending' left over was cut off by a reload.
  for (const item of all()) {
    if (item.state === 'sending') {
      item.state = 'waiting';
      await save(item);
    }
  }
  await prune();
  notify();
  for (let guard = 0; guard < 1000; guard++) {
    const pick = logic.nextToSend(all(), username(), Date.now(), force);
    if (!pick.item) return;
    if (await attempt(pick.item)) return;
  }
}

async function withLease(fn) {
  const read = () => {
    try { return JSON.parse(localStorage.getItem(LEASE_KEY) || 'null'); } catch (_) { return null; }
  };
  const write = () => {
    try { localStorage.setItem(LEASE_KEY, JSON.stringify({ tab: TAB, until: Date.now() + LEASE_MS })); } catch (_) { /* no storage: no guard */ }
  };
  const lease = read();
  if (lease && lease.tab !== TAB && lease.until > Date.now()) return LOCKED;
  write();
  const renew = setInterval(write, LEASE_MS / 3);
  try {
    return await fn();
  } finally {
    clearInterval(renew);
    if (read()?.tab === TAB) {
      try { localStorage.removeItem(LEASE_KEY); } catch (_) { /* as above */ }
    }
  }
}

// One sender per phone: two tabs sending the same item would fight over upload offsets.
function withLock(fn) {
  if (navigator.locks && navigator.locks.request) {
    return navigator.locks.request(LOCK_NAME, { ifAvailable: true }, (lock) => (lock ? fn() : LOCKED));
  }
  return withLease(fn);
}

function schedule(ms) {
  clearTimeout(timer);
  timer = setTimeout(() => { timer = null; flush({ force: false }); }, ms);
}

function scheduleNext() {
  clearTimeout(timer);
  timer = null;
  const pick = logic.nextToSend(all(), username(), Date.now(), false);
  if (pick.waitUntil) schedule(Math.max(1000, pick.waitUntil - Date.now()));
  else if (pick.item) schedule(1000);
}

// Sends what waits, in order, until the queue is empty, something must wait, or a sign-in is needed.
// `force` ignores the backoff (the network came back, the person asked).
export function flush({ force = true } = {}) {
  if (running) {
    again = true;
    againForce = againForce || force;
    return running;
  }
  running = (async () => {
    let lockedOut = false;
    let f = force;
    try {
      for (;;) {
        again = false;
        againForce = false;
        const result = await withLock(() => drain(f));
        if (result === LOCKED) {
          lockedOut = true;
          break;
        }
        if (!again) break;
        f = againForce;
      }
    } catch (_) {
      // IndexedDB trouble: the next trigger tries again.
    } finally {
      running = null;
      if (lockedOut) schedule(LOCKED_RETRY_MS);
      else scheduleNext();
    }
  })();
  return running;
}

async function resumeAfterSignIn(user) {
  await ensureLoaded();
  for (const item of all()) {
    if (item.user === user && item.state === 'auth') {
      item.state = 'waiting';
      item.nextAttemptMs = 0;
      item.error = null;
      await save(item);
    }
  }
  notify();
  broadcast();
  flush({ force: true });
}

// Starts the outbox once per page: sends at start, when the network comes back, when the service
// worker relays Background Sync, after a sign-in, when the page is shown again, and every 30 s while
// something waits. Only the person (opening the app, queueing, retry), a sign-in and the network
// coming back skip the backoff; the rest wait for it.
export function start() {
  if (started) return;
  started = true;
  ensureLoaded().then(() => {
    // Signed in at start (a reload after signing in elsewhere): items held for a sign-in may go; a
    // session that is in fact over only sends them back to waiting for one.
    const user = username();
    if (user && all().some((i) => i.user === user && i.state === 'auth')) {
      resumeAfterSignIn(user).catch(() => {});
      return;
    }
    notify();
    // Opening the app is the person asking: once per page load, so it cannot loop, and a send cut
    // off by the previous page's unload is not left waiting out a backoff.
    flush({ force: true });
  });
  window.addEventListener('online', () => flush({ force: true }));
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') flush({ force: false });
  });
  if ('serviceWorker' in navigator) {
    // Not forced: the browser fires Background Sync as soon as it thinks it is online, which it also
    // is while the node is down; forcing would retry in a tight loop instead of backing off.
    navigator.serviceWorker.addEventListener('message', (event) => {
      if (event.data && event.data.type === 'outbox-sync') flush({ force: false });
    });
  }
  onSessionChange((user) => {
    if (user) resumeAfterSignIn(user.username).catch(() => {});
    else notify();
  });
  setInterval(() => {
    if (all().some((i) => i.state === 'waiting')) flush({ force: false });
  }, POLL_MS);
  if (channel) {
    channel.addEventListener('message', () => {
      reload().then(() => notify()).catch(() => {});
    });
  }
}
