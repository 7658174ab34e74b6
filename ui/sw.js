// The service worker. It opens the app with no network (the shell and this version's files come from
// the phone), keeps the last answers of the few reads a grid worker needs in the field so the lists
// and incidents they opened stay readable offline (marked with their age), and wakes an open page
// when the browser says the network is back so the page's outbox sends. Sending itself stays in the
// page (ui/js/outbox.js): one sender, one place to get it right.
//
// The node serves this file at /sw.js, uncached, with the UI version and the list of UI files filled
// in: until then it is not valid JavaScript (tests/ui/sw.test.mjs fills them in the same way).
'use strict';

const VERSION = '__UI_VERSION__';
const ASSETS = __ASSETS__;

const SHELL_CACHE = `shell-${VERSION}`;
const API_CACHE = 'api-data';
// Newest answers kept; lists with filters add up, and a phone's storage is shared with photos.
const API_MAX_ENTRIES = 200;
// Past this a navigation answers from the phone: a shell arriving after 4 s on village Wi-Fi is
// worse than the one already here.
const NAVIGATION_TIMEOUT_MS = 4000;
// Past this a read answers from the phone if it can; the network answer still refreshes the copy.
const API_TIMEOUT_MS = 6000;
const STORED_AT = 'X-Offline-Stored-At';
const CACHED_AT = 'X-Offline-Cached-At';
// Bumped when the page asks to forget the data: a read still on its way must not store it again.
let epoch = 0;

// Reads worth having offline: who I am, the node, the catalog the report form needs, incident lists
// and the incidents opened, warning lists. Nothing else: not blobs, not exports, not event streams.
function cacheableApi(url) {
  const p = url.pathname;
  if (p === '/api/v1/session' || p === '/api/v1/node' || p === '/api/v1/catalog'
    || p === '/api/v1/incidents' || p === '/api/v1/warnings') return true;
  const m = /^\/api\/v1\/incidents\/([^/]+)$/.exec(p);
  return Boolean(m) && !m[1].startsWith('export.');
}

// App pages: the node answers any path that is not the API, a file or the certificate pages with the
// shell, so the cached shell can answer them too.
function isAppPage(pathname) {
  if (pathname === '/api' || pathname.startsWith('/api/')) return false;
  if (pathname === '/ca' || pathname === '/ca.crt' || pathname.startsWith('/ca/')) return false;
  if (pathname === '/index.html') return true;
  const last = pathname.slice(pathname.lastIndexOf('/') + 1);
  return !last.includes('.');
}

const REVALIDATED = new Set(['/icon.svg', '/manifest.webmanifest', '/icon-192.png', '/icon-512.png', '/icon-maskable.svg', '/icon-maskable-512.png']);

async function precache(cache, url) {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const response = await fetch(url, { credentials: 'same-origin' });
      if (response.ok) {
        await cache.put(url, response);
        return;
      }
      // A file the node does not serve (the shell under an asset path, say) is nothing to keep;
      // anything else that failed may work on the next try.
      if (response.status === 404) return;
    } catch (_) { /* tried again below */ }
  }
  throw new Error(`could not cache ${url}`);
}

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(SHELL_CACHE);
    const shell = await fetch('/', { cache: 'no-store', credentials: 'same-origin' });
    if (!shell.ok) throw new Error('the shell did not load');
    // A node upgraded between serving this file and the shell would pair this version's files with
    // another version's shell; failing here makes the browser fetch the new worker instead.
    const text = await shell.clone().text();
    if (!text.includes(`/assets/${VERSION}/`)) throw new Error('the shell is of another version');
    await cache.put('/', shell);
    // All or nothing, as an offline app missing one module does not start.
    await Promise.all(ASSETS.filter((url) => url !== '/' && !url.endsWith('/sw.js')).map((url) => precache(cache, url)));
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    const names = await caches.keys();
    await Promise.all(names.filter((n) => n.startsWith('shell-') && n !== SHELL_CACHE).map((n) => caches.delete(n)));
    await self.clients.claim();
  })());
});

function timeout(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms, 'timeout'));
}

function offlinePage() {
  const body = '<!doctype html><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
    + '<title>离线 · Offline</title><p>无法连接本节点，请联网后重试。</p><p lang="en">The node cannot be reached. Try again when online.</p>';
  return new Response(body, { status: 503, headers: { 'Content-Type': 'text/html; charset=utf-8' } });
}

async function navigation(request) {
  const network = fetch(request);
  try {
    const first = await Promise.race([network, timeout(NAVIGATION_TIMEOUT_MS)]);
    if (first !== 'timeout') return first;
  } catch (_) { /* offline: the phone's copy below */ }
  const cached = await caches.match('/', { cacheName: SHELL_CACHE });
  if (cached) return cached;
  try {
    return await network;
  } catch (_) {
    return offlinePage();
  }
}

// Files under /assets/<version>/ never change: the phone's copy, else the network's (kept when it is
// this version's).
async function asset(request, url) {
  const cached = await caches.match(request);
  if (cached) return cached;
  const response = await fetch(request);
  if (response.ok && url.pathname.startsWith(`/assets/${VERSION}/`)) {
    const copy = response.clone();
    caches.open(SHELL_CACHE).then((cache) => cache.put(request, copy)).catch(() => {});
  }
  return response;
}

// Icons and the manifest: the phone's copy now, the network's for next time.
function revalidated(request) {
  const update = caches.open(SHELL_CACHE).then(async (cache) => {
    const response = await fetch(request);
    if (response.ok) await cache.put(request, response.clone());
    return response;
  });
  const response = caches.match(request, { cacheName: SHELL_CACHE }).then((cached) => cached || update);
  return { response, background: update.catch(() => {}) };
}

async function trim(cache) {
  const keys = await cache.keys();
  // Keys come oldest first (a put replaces an entry by appending it), so the first ones go.
  const extra = keys.length - API_MAX_ENTRIES;
  for (let i = 0; i < extra; i++) await cache.delete(keys[i]);
}

async function store(url, response, seenEpoch) {
  let body = await response.blob();
  // The page never sends with a token from a copy (it may be stale); the copy need not hold it.
  if (new URL(url).pathname === '/api/v1/session') {
    try {
      const data = JSON.parse(await body.text());
      delete data.csrf_token;
      body = new Blob([JSON.stringify(data)], { type: 'application/json' });
    } catch (_) {
      return;
    }
  }
  const headers = new Headers(response.headers);
  headers.set(STORED_AT, String(Date.now()));
  headers.delete('Vary');
  headers.delete('Content-Length');
  if (seenEpoch !== epoch) return;
  const cache = await caches.open(API_CACHE);
  await cache.put(url, new Response(body, { status: 200, statusText: response.statusText, headers }));
  await trim(cache);
}

async function fromCache(url) {
  const cache = await caches.open(API_CACHE);
  const cached = await cache.match(url, { ignoreVary: true });
  if (!cached) return null;
  const headers = new Headers(cached.headers);
  headers.set(CACHED_AT, headers.get(STORED_AT) || '0');
  headers.delete(STORED_AT);
  return new Response(cached.body, { status: cached.status, statusText: cached.statusText, headers });
}

async function clearApi() {
  epoch++;
  await caches.delete(API_CACHE);
}

// Network first; a copy of every 200 kept; the copy answers when the network does not (or too late).
function apiRead(request) {
  const url = request.url;
  const seenEpoch = epoch;
  const network = fetch(request);
  const kept = network.then(async (response) => {
    if (response.status === 200) await store(url, response.clone(), seenEpoch);
    // Signed out on the node: what this phone kept for that person goes (a shared phone).
    else if (response.status === 401) await clearApi();
    return response;
  });
  const response = (async () => {
    let first;
    try {
      first = await Promise.race([kept, timeout(API_TIMEOUT_MS)]);
    } catch (_) {
      first = null;
    }
    if (first && first !== 'timeout') return first;
    const cached = await fromCache(url);
    if (cached) return cached;
    if (first === 'timeout') {
      try {
        return await kept;
      } catch (_) { /* no network and no copy */ }
    }
    return Response.error();
  })();
  return { response, background: kept.catch(() => {}) };
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === 'navigate') {
    if (request.method === 'GET' && isAppPage(url.pathname)) event.respondWith(navigation(request));
    return;
  }
  if (request.method !== 'GET' || request.headers.has('range')) return;
  if (url.pathname.startsWith('/assets/')) {
    event.respondWith(asset(request, url));
  } else if (REVALIDATED.has(url.pathname)) {
    const work = revalidated(request);
    event.respondWith(work.response);
    event.waitUntil(work.background);
  } else if (cacheableApi(url)) {
    const work = apiRead(request);
    event.respondWith(work.response);
    event.waitUntil(work.background);
  }
});

self.addEventListener('message', (event) => {
  // Signing out on a shared phone: nothing of this person's stays readable offline.
  if (event.data && event.data.type === 'clear-api-data') event.waitUntil(clearApi());
});

async function tellPages(message) {
  const pages = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  for (const page of pages) page.postMessage(message);
}

// The browser says the network is back: an open page sends its outbox. With no page open nothing
// happens; the next page opened sends it.
self.addEventListener('sync', (event) => {
  if (event.tag === 'outbox') event.waitUntil(tellPages({ type: 'outbox-sync' }));
});
