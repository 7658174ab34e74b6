// Report drafts: what a person has typed and the photos they picked, kept in IndexedDB per user as
// they go, so a reload, a session timeout, or the browser dropped from memory by a phone call does
// not lose a half-written report. Removed when the report is queued (outbox.enqueue does it in the
// same transaction, so a report is never both queued and still a draft) or by "clear draft".
import { run, req, getBlob } from './idb.js';
import { uuidv4 } from './outbox-logic.js';

export { getBlob };

// Writes are chained so a load never overtakes a save made before it.
let writes = Promise.resolve();
function chain(fn) {
  const next = writes.then(fn, fn);
  writes = next.catch(() => {});
  return next;
}

export async function loadDraft(user) {
  await writes;
  return run('drafts', 'readonly', (t) => req(t.objectStore('drafts').get(user))).then((d) => d || null);
}

function update(user, change) {
  return chain(() => run(['drafts', 'blobs'], 'readwrite', async (t) => {
    const store = t.objectStore('drafts');
    const draft = (await req(store.get(user))) || { user, fields: {}, photos: [], savedMs: 0 };
    change(draft, t);
    draft.savedMs = Date.now();
    store.put(draft);
    return draft;
  }));
}

export function saveFields(user, fields) {
  return update(user, (draft) => { draft.fields = fields; });
}

// Stores the photo's bytes with the draft; returns its key.
export async function addPhoto(user, photo, blob) {
  const key = `draft:${uuidv4()}`;
  await update(user, (draft, t) => {
    t.objectStore('blobs').put({ key, blob });
    draft.photos.push({ blobKey: key, name: photo.name, type: photo.type, size: blob.size, gps: photo.gps || null });
  });
  return key;
}

export function removePhoto(user, blobKey) {
  return update(user, (draft, t) => {
    t.objectStore('blobs').delete(blobKey);
    draft.photos = draft.photos.filter((p) => p.blobKey !== blobKey);
  });
}

export function clearDraft(user) {
  return chain(() => run(['drafts', 'blobs'], 'readwrite', async (t) => {
    const draft = await req(t.objectStore('drafts').get(user));
    for (const p of draft?.photos || []) t.objectStore('blobs').delete(p.blobKey);
    t.objectStore('drafts').delete(user);
  }));
}

// Waits for every draft write begun so far (before queueing the report, which removes the draft).
export function settled() {
  return writes;
}
