// The service worker (ui/sw.js), rendered the way the node serves it and run against a fake browser:
// the precache, offline navigation, immutable assets, the offline copies of reads and what is never
// kept, sign-out clearing, and Background Sync waking the page. Run with `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');
const SOURCE = readFileSync(join(UI, 'sw.js'), 'utf8');
const ORIGIN = 'https://node.example';
const VERSION = 'ab12cd34ef56';
const ASSETS = [`/assets/${VERSION}/js/app.js`, `/assets/${VERSION}/css/app.css`, '/icon.svg', '/manifest.webmanifest'];

// What the node does before serving /sw.js.
function render(version = VERSION, assets = ASSETS) {
  return SOURCE.replaceAll('__UI_VERSION__', version).replaceAll('__ASSETS__', JSON.stringify(assets));
}

class FakeCache {
  constructor() { this.entries = new Map(); }
  key(r) { return new URL(typeof r === 'string' ? r : r.url, ORIGIN).href; }
  async put(r, response) { const k = this.key(r); this.entries.delete(k); this.entries.set(k, response); }
  async match(r) { const v = this.entries.get(this.key(r)); return v ? v.clone() : undefined; }
  async keys() { return [...this.entries.keys()].map((url) => ({ url })); }
  async delete(r) { return this.entries.delete(this.key(r)); }
}

class FakeCaches {
  constructor() { this.named = new Map(); }
  async open(name) { if (!this.named.has(name)) this.named.set(name, new FakeCache()); return this.named.get(name); }
  async keys() { return [...this.named.keys()]; }
  async delete(name) { return this.named.delete(name); }
  async match(r, { cacheName } = {}) {
    for (const [name, cache] of this.named) {
      if (cacheName && name !== cacheName) continue;
      const hit = await cache.match(r);
      if (hit) return hit;
    }
    return undefined;
  }
}

// A fake network: `routes` maps a path to a function giving a Response; `mode` is online, offline
// (fetch rejects, as a browser's does) or hanging (no answer ever).
function worker({ version = VERSION, assets = ASSETS } = {}) {
  const listeners = {};
  const posted = [];
  const net = {
    mode: 'online',
    calls: [],
    routes: {
      '/': () => new Response(`<html><script src="/assets/${version}/js/app.js"></script></html>`, { headers: { 'Content-Type': 'text/html' } }),
    },
  };
  const fetchFake = (input, init = {}) => {
    const url = new URL(typeof input === 'string' ? input : input.url, ORIGIN);
    net.calls.push({ path: url.pathname + url.search, method: init.method || input.method || 'GET' });
    if (net.mode === 'offline') return Promise.reject(new TypeError('Failed to fetch'));
    if (net.mode === 'hanging') return new Promise(() => {});
    const route = net.routes[url.pathname + url.search] || net.routes[url.pathname];
    return Promise.resolve(route ? route() : new Response('missing', { status: 404 }));
  };
  const caches = new FakeCaches();
  const self = {
    location: new URL('/sw.js', ORIGIN),
    addEventListener: (type, fn) => { listeners[type] = fn; },
    skipWaiting: async () => {},
    clients: {
      claim: async () => {},
      matchAll: async () => [{ postMessage: (m) => posted.push(m) }],
    },
  };
  // Timers run 100 times faster, so the 4 s and 6 s timeouts take milliseconds.
  const context = vm.createContext({
    self, caches, fetch: fetchFake, Response, Headers, Blob, URL, Promise, JSON, console,
    setTimeout: (fn, ms, ...args) => setTimeout(fn, ms / 100, ...args),
  });
  vm.runInContext(render(version, assets), context, { filename: 'sw.js' });

  const dispatch = async (type, fields = {}) => {
    const waits = [];
    let response = null;
    const event = { ...fields, waitUntil: (p) => waits.push(p), respondWith: (p) => { response = p; } };
    listeners[type](event);
    const answer = response ? await response : null;
    // A hanging network keeps its background work pending for ever; the rest settles at once.
    await Promise.race([Promise.all(waits), new Promise((resolve) => setTimeout(resolve, 200))]);
    return answer;
  };
  const get = (path, { mode = 'cors', method = 'GET', headers = {} } = {}) => dispatch('fetch', {
    request: { url: new URL(path, ORIGIN).href, method, mode, headers: new Headers(headers) },
  });
  return { net, caches, posted, dispatch, get, listeners };
}

async function installed(options) {
  const w = worker(options);
  w.net.routes[`/assets/${VERSION}/js/app.js`] = () => new Response('// app');
  w.net.routes[`/assets/${VERSION}/css/app.css`] = () => new Response('/* css */');
  w.net.routes['/icon.svg'] = () => new Response('<svg/>');
  w.net.routes['/manifest.webmanifest'] = () => new Response('{}');
  await w.dispatch('install');
  await w.dispatch('activate');
  return w;
}

test('the rendered worker is valid JavaScript; the template names both placeholders', () => {
  assert.ok(SOURCE.includes("'__UI_VERSION__'"));
  assert.ok(SOURCE.includes('= __ASSETS__;'));
  const dir = mkdtempSync(join(tmpdir(), 'sw-'));
  try {
    const file = join(dir, 'sw.js');
    writeFileSync(file, render());
    execFileSync(process.execPath, ['--check', file]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('install keeps the shell and every asset; activation drops other versions only', async () => {
  const w = worker();
  for (const a of ASSETS) w.net.routes[a] = () => new Response(a);
  const old = await w.caches.open('shell-000000000000');
  await old.put('/', new Response('old'));
  await (await w.caches.open('api-data')).put('/api/v1/node', new Response('{}'));
  await w.dispatch('install');
  const cache = await w.caches.open(`shell-${VERSION}`);
  assert.deepEqual((await cache.keys()).map((k) => new URL(k.url).pathname).sort(), ['/', ...ASSETS].sort());
  await w.dispatch('activate');
  assert.deepEqual((await w.caches.keys()).sort(), ['api-data', `shell-${VERSION}`]);
});

test('install fails rather than pair this version with another version\'s shell or miss a file', async () => {
  const other = worker();
  other.net.routes['/'] = () => new Response('<script src="/assets/ffffffffffff/js/app.js"></script>');
  await assert.rejects(other.dispatch('install'), /another version/);
  const failing = worker();
  failing.net.routes[ASSETS[0]] = () => new Response('busy', { status: 503 });
  await assert.rejects(failing.dispatch('install'), /could not cache/);
  // A file the node does not have is skipped, not a reason never to work offline.
  const missing = worker({ assets: [...ASSETS, '/assets/ab12cd34ef56/index.html', '/sw.js'] });
  for (const a of ASSETS) missing.net.routes[a] = () => new Response(a);
  await missing.dispatch('install');
  const kept = await (await missing.caches.open(`shell-${VERSION}`)).keys();
  assert.equal(kept.length, ASSETS.length + 1);
  assert.ok(!missing.net.calls.some((c) => c.path === '/sw.js'), 'the worker itself is not precached');
});

test('deep links open offline and on a hanging network from the kept shell', async () => {
  const w = await installed();
  w.net.routes['/incidents/123'] = () => new Response('fresh shell');
  assert.equal(await (await w.get('/incidents/123', { mode: 'navigate' })).text(), 'fresh shell');
  w.net.mode = 'offline';
  const offline = await w.get('/incidents/123', { mode: 'navigate' });
  assert.match(await offline.text(), new RegExp(`/assets/${VERSION}/`));
  w.net.mode = 'hanging';
  const slow = await w.get('/outbox', { mode: 'navigate' });
  assert.match(await slow.text(), /app\.js/);
  // Not app pages: the API, the certificate pages, files.
  for (const path of ['/api/v1/blobs/abc', '/ca', '/ca.crt', '/icon.svg', '/api/v1/incidents/export.csv']) {
    assert.equal(await w.get(path, { mode: 'navigate' }), null, path);
  }
});

test('a first visit offline gets a plain page saying so', async () => {
  const w = worker();
  w.net.mode = 'offline';
  const page = await w.get('/incidents', { mode: 'navigate' });
  assert.equal(page.status, 503);
  assert.match(await page.text(), /无法连接本节点/);
});

test('versioned assets come from the phone first; icons answer at once and refresh', async () => {
  const w = await installed();
  w.net.mode = 'offline';
  assert.equal(await (await w.get(`/assets/${VERSION}/js/app.js`)).text(), '// app');
  assert.equal(await (await w.get('/icon.svg')).text(), '<svg/>');
  w.net.mode = 'online';
  w.net.routes['/icon.svg'] = () => new Response('<svg new/>');
  assert.equal(await (await w.get('/icon.svg')).text(), '<svg/>', 'the kept copy now');
  assert.equal(await (await w.get('/icon.svg')).text(), '<svg new/>', 'the fresh one next time');
  w.net.routes[`/assets/${VERSION}/js/pages/new.js`] = () => new Response('// new');
  await w.get(`/assets/${VERSION}/js/pages/new.js`);
  w.net.mode = 'offline';
  assert.equal(await (await w.get(`/assets/${VERSION}/js/pages/new.js`)).text(), '// new');
});

test('reads are kept and answered offline with the time they were kept', async () => {
  const w = await installed();
  const json = (body, status = 200) => () => new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
  w.net.routes['/api/v1/incidents?limit=30'] = json({ incidents: [{ id: 'a' }] });
  w.net.routes['/api/v1/incidents/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b'] = json({ id: '0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b' });
  w.net.routes['/api/v1/session'] = json({ user: { username: 'wang' }, can: [], csrf_token: 'secret-token' });
  const before = Date.now();
  const live = await w.get('/api/v1/incidents?limit=30');
  assert.equal(live.headers.get('X-Offline-Cached-At'), null, 'a live answer is not marked');
  await w.get('/api/v1/incidents/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b');
  await w.get('/api/v1/session');
  w.net.mode = 'offline';
  const copy = await w.get('/api/v1/incidents?limit=30');
  assert.deepEqual(await copy.json(), { incidents: [{ id: 'a' }] });
  const at = Number(copy.headers.get('X-Offline-Cached-At'));
  assert.ok(at >= before && at <= Date.now(), String(at));
  assert.equal(copy.headers.get('X-Offline-Stored-At'), null);
  assert.equal((await w.get('/api/v1/incidents/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b')).status, 200);
  const session = await (await w.get('/api/v1/session')).json();
  assert.deepEqual(session, { user: { username: 'wang' }, can: [] }, 'no CSRF token on the phone\'s disk');
  // Another filter was never loaded: a network error, as without the worker.
  assert.equal((await w.get('/api/v1/incidents?limit=30&state=closed')).type, 'error');
  // Slow network: the copy after the timeout.
  w.net.mode = 'hanging';
  assert.equal((await w.get('/api/v1/incidents?limit=30')).headers.has('X-Offline-Cached-At'), true);
});

test('never kept: changes, blobs, exports, event streams, other paths, errors', async () => {
  const w = await installed();
  w.net.routes['/api/v1/incidents/x'] = () => new Response('{"detail":"not found"}', { status: 404 });
  w.net.routes['/api/v1/warnings'] = () => new Response('{}', { status: 500 });
  for (const [path, options] of [
    ['/api/v1/incidents', { method: 'POST' }],
    ['/api/v1/uploads/abc', { method: 'HEAD' }],
    ['/api/v1/blobs/abc', {}],
    ['/api/v1/blobs/abc/thumbnail', {}],
    ['/api/v1/incidents/export.csv', {}],
    ['/api/v1/warnings/events', {}],
    ['/api/v1/sync/status', {}],
    ['/api/v1/users', {}],
    ['/api/v1/incidents/abc/attachments', {}],
  ]) {
    assert.equal(await w.get(path, options), null, `${options.method || 'GET'} ${path} passes through untouched`);
  }
  assert.equal(await w.get('/api/v1/incidents', { headers: { Range: 'bytes=0-10' } }), null);
  assert.equal((await w.get('/api/v1/incidents/x')).status, 404);
  assert.equal((await w.get('/api/v1/warnings')).status, 500);
  const kept = await w.caches.open('api-data');
  assert.equal((await kept.keys()).length, 0);
});

test('a 401 or a sign-out forgets every kept read; the store stays bounded', async () => {
  const w = await installed();
  let status = 200;
  w.net.routes['/api/v1/node'] = () => new Response('{}', { status });
  for (let i = 0; i < 205; i++) w.net.routes[`/api/v1/incidents?page=${i}`] = () => new Response('{}');
  for (let i = 0; i < 205; i++) await w.get(`/api/v1/incidents?page=${i}`);
  let keys = await (await w.caches.open('api-data')).keys();
  assert.equal(keys.length, 200);
  assert.ok(keys.every((k) => !/page=[0-4]$/.test(k.url)), 'the oldest went');
  await w.dispatch('message', { data: { type: 'clear-api-data' } });
  assert.equal((await (await w.caches.open('api-data')).keys()).length, 0);
  await w.get('/api/v1/node');
  assert.equal((await (await w.caches.open('api-data')).keys()).length, 1);
  status = 401;
  assert.equal((await w.get('/api/v1/node')).status, 401);
  keys = await (await w.caches.open('api-data')).keys();
  assert.equal(keys.length, 0);
});

test('Background Sync tells open pages to send their outbox', async () => {
  const w = await installed();
  await w.dispatch('sync', { tag: 'something-else' });
  assert.deepEqual(w.posted, []);
  await w.dispatch('sync', { tag: 'outbox' });
  assert.equal(JSON.stringify(w.posted), JSON.stringify([{ type: 'outbox-sync' }]));
});
