// The phone's own database (IndexedDB "township-outbox"): the outbox's items, photo bytes, and report
// drafts. It outlives reloads, a closed browser and a restarted phone, which is the whole point: a
// grid worker's report must not depend on the page staying open until the Wi-Fi comes back.
const NAME = 'township-outbox';
const VERSION = 1;

let opening = null;

export function db() {
  if (!opening) {
    opening = new Promise((resolve, reject) => {
      if (!('indexedDB' in self)) {
        reject(new Error('IndexedDB unavailable'));
        return;
      }
      const request = indexedDB.open(NAME, VERSION);
      request.onupgradeneeded = () => {
        const d = request.result;
        // Items keyed by an increasing number: the key generator never goes back, so it is the order
        // things were made in even across tabs.
        if (!d.objectStoreNames.contains('items')) d.createObjectStore('items', { keyPath: 'seq', autoIncrement: true });
        if (!d.objectStoreNames.contains('blobs')) d.createObjectStore('blobs', { keyPath: 'key' });
        if (!d.objectStoreNames.contains('drafts')) d.createObjectStore('drafts', { keyPath: 'user' });
      };
      request.onsuccess = () => {
        const d = request.result;
        // A newer UI in another tab wants to upgrade: let it, and open again next time.
        d.onversionchange = () => {
          d.close();
          opening = null;
        };
        resolve(d);
      };
      request.onerror = () => {
        opening = null;
        reject(request.error);
      };
      request.onblocked = () => { /* another tab closes its connection on versionchange */ };
    });
  }
  return opening;
}

// One request's result as a promise. Awaiting only these inside `run` keeps the transaction alive.
export function req(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

// Runs `fn(transaction)` in one transaction over `stores`; resolves with fn's value once the
// transaction has committed, so a caller never reports something saved that was not.
export async function run(stores, mode, fn) {
  const d = await db();
  const t = d.transaction(stores, mode);
  const complete = new Promise((resolve, reject) => {
    t.oncomplete = () => resolve();
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error || new Error('transaction aborted'));
  });
  let value;
  try {
    value = await fn(t);
  } catch (error) {
    try { t.abort(); } catch (_) { /* already finished */ }
    complete.catch(() => {});
    throw error;
  }
  await complete;
  return value;
}

export async function getBlob(key) {
  const record = await run('blobs', 'readonly', (t) => req(t.objectStore('blobs').get(key)));
  return record ? record.blob : null;
}
