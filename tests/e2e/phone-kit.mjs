// What the phone tests and the phone benchmark share: a hub started with HTTPS for `hub.test`, a
// Chromium whose NSS database trusts the hub's CA (and nothing is ignored: a certificate error fails),
// a proxy that cuts every connection after a number of bytes, DevTools link emulation, camera-like
// photos made in the page, and a plain-HTTP admin client on loopback for checking what the hub holds.
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { request as httpsRequest } from 'node:https';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const ADMIN_PASSWORD = 'Phone-Admin-Pass-2026';
export const WORKER_PASSWORD = 'Phone-Worker-Pass-2026';
export const WORKER = 'grid.wang';
export const HOST = 'hub.test';
// Where the test phone says it is (王宅村).
export const POSITION = { latitude: 28.903217, longitude: 120.039841 };

function env(extra = {}) {
  return { PATH: process.env.PATH, TOWNSHIP_HTTP__HTTPS_LISTEN: '127.0.0.1:0', TOWNSHIP_HTTP__TLS_NAMES: `["${HOST}"]`, ...extra };
}

// Initialises a township node in `dir` with a grid worker and starts it; resolves when both
// listeners have said where they are.
export async function startHub(bin, dir) {
  writeFileSync(join(dir, 'admin.pw'), `${ADMIN_PASSWORD}\n`);
  writeFileSync(join(dir, 'worker.pw'), `${WORKER_PASSWORD}\n`);
  const data = join(dir, 'node');
  execFileSync(bin, ['init', '--data-dir', data, '--area', '330723001', '--name', '熟溪街道', '--role', 'township',
    '--admin-password-file', join(dir, 'admin.pw')], { env: env() });
  execFileSync(bin, ['user', 'add', '--data-dir', data, '--username', WORKER, '--role', 'grid_worker',
    '--area', '330723001001', '--display-name', '王芳', '--password-file', join(dir, 'worker.pw')], { env: env() });
  const child = spawn(bin, ['serve', '--data-dir', data, '--listen', '127.0.0.1:0'], { env: env({ RUST_LOG: 'info' }) });
  const found = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`hub did not report its addresses: ${buffer}`)), 30000);
    let buffer = '';
    const onData = (chunk) => {
      buffer += chunk.toString();
      const http = /listening on (http:\/\/[0-9.:]+)/.exec(buffer);
      const https = /listening on https:\/\/[0-9.]+:([0-9]+)/.exec(buffer);
      if (http && https) {
        clearTimeout(timer);
        resolve({ base: http[1], httpsPort: Number(https[1]) });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => reject(new Error(`hub exited with ${code}: ${buffer}`)));
  });
  return { child, data, ...found };
}

// A HOME whose NSS database trusts the hub's CA, fetched over plain HTTP as a phone fetches it.
export async function trustingHome(base, dir) {
  const ca = Buffer.from(await (await fetch(`${base}/ca.crt`)).arrayBuffer());
  const home = join(dir, 'home');
  const nss = join(home, '.pki', 'nssdb');
  mkdirSync(nss, { recursive: true });
  writeFileSync(join(dir, 'ca.der'), ca);
  execFileSync('certutil', ['-d', `sql:${nss}`, '-N', '--empty-password']);
  execFileSync('certutil', ['-d', `sql:${nss}`, '-A', '-n', 'township-node LAN CA', '-t', 'C,,', '-i', join(dir, 'ca.der')]);
  return home;
}

// A phone: a persistent profile (IndexedDB and the service worker survive closing it), the hub's
// CA trusted through NSS, `hub.test` resolving to loopback, and the position granted.
export function launchPhone(profile, home, { serviceWorkers = 'allow' } = {}) {
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    env: { ...process.env, HOME: home },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', `--host-resolver-rules=MAP ${HOST} 127.0.0.1`],
    geolocation: POSITION,
    permissions: ['geolocation'],
    locale: 'zh-CN',
    viewport: { width: 390, height: 780 },
    serviceWorkers,
  });
}

// DevTools link emulation: `kbps` both ways and `latencyMs` added to each request.
export async function emulateLink(page, kbps, latencyMs) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: latencyMs,
    downloadThroughput: (kbps * 1000) / 8,
    uploadThroughput: (kbps * 1000) / 8,
  });
  return cdp;
}

// A TCP proxy to 127.0.0.1:`target` that cuts every connection once `cutAfter` bytes have passed
// (Infinity: never)
// (both directions counted), as a village link in a storm does. `stats.cuts` counts the cuts.
export function cuttingProxy(target, cutAfter) {
  const stats = { connections: 0, cuts: 0, bytes: 0 };
  const sockets = new Set();
  let down = false;
  const server = createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    stats.connections += 1;
    const upstream = connect(target, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    let passed = 0;
    const pass = (from, to) => from.on('data', (chunk) => {
      passed += chunk.length;
      stats.bytes += chunk.length;
      if (passed > cutAfter) {
        stats.cuts += 1;
        client.destroy();
        upstream.destroy();
        return;
      }
      to.write(chunk);
    });
    pass(client, upstream);
    pass(upstream, client);
    const end = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream); };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    port: server.address().port,
    stats,
    close: () => new Promise((done) => { for (const s of sockets) s.destroy(); server.close(() => done()); }),
    // The link goes down (every connection cut, new ones refused) or comes back: offline for the
    // page and its service worker alike, which DevTools' offline switch is not.
    setDown: (value) => {
      down = value;
      if (down) for (const s of sockets) s.destroy();
    },
  })));
}

// A camera-like JPEG of `width` × `height` made in the page (gradients, shapes and sensor noise, so it
// compresses like a photo, not like a flat test card).
export async function cameraPhoto(page, width, height, quality = 0.92) {
  const base64 = await page.evaluate(async ({ width, height, quality }) => {
    const canvas = new OffscreenCanvas(width, height);
    const g = canvas.getContext('2d');
    const sky = g.createLinearGradient(0, 0, 0, height);
    sky.addColorStop(0, '#7fb2e5');
    sky.addColorStop(0.55, '#d9e6f2');
    sky.addColorStop(0.56, '#5d7a3a');
    sky.addColorStop(1, '#3b4d25');
    g.fillStyle = sky;
    g.fillRect(0, 0, width, height);
    let seed = 42;
    const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
    for (let i = 0; i < 400; i += 1) {
      g.fillStyle = `hsl(${Math.floor(rnd() * 360)},${20 + rnd() * 40}%,${25 + rnd() * 50}%)`;
      g.fillRect(rnd() * width, height * 0.4 + rnd() * height * 0.6, 20 + rnd() * width / 8, 20 + rnd() * height / 8);
    }
    const img = g.getImageData(0, 0, width, height);
    for (let i = 0; i < img.data.length; i += 4) {
      const n = (rnd() - 0.5) * 36;
      img.data[i] += n; img.data[i + 1] += n; img.data[i + 2] += n;
    }
    g.putImageData(img, 0, 0);
    const blob = await canvas.convertToBlob({ type: 'image/jpeg', quality });
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }, { width, height, quality });
  return Buffer.from(base64, 'base64');
}

// The photos waiting in the phone's outbox, as SHA-256 hex with their bytes' size and pixel size.
export function outboxPhotos(page) {
  return page.evaluate(async () => {
    const db = await new Promise((resolve, reject) => {
      const r = indexedDB.open('township-outbox');
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
    const records = await new Promise((resolve, reject) => {
      const r = db.transaction('blobs').objectStore('blobs').getAll();
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
    db.close();
    const out = [];
    for (const record of records) {
      if (!String(record.key).startsWith('item:')) continue;
      const buffer = await record.blob.arrayBuffer();
      const digest = await crypto.subtle.digest('SHA-256', buffer);
      const bitmap = await createImageBitmap(record.blob);
      out.push({
        key: record.key,
        sha256: [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join(''),
        size: buffer.byteLength,
        width: bitmap.width,
        height: bitmap.height,
      });
    }
    return out;
  });
}

// The hub's admin over plain HTTP on loopback (no browser): what the hub really holds.
export async function adminClient(base) {
  const r = await fetch(`${base}/api/v1/session`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'admin', password: ADMIN_PASSWORD }),
  });
  if (!r.ok) throw new Error(`admin sign-in: ${r.status}`);
  const cookie = r.headers.get('set-cookie').split(';')[0];
  const get = async (path) => {
    const response = await fetch(`${base}${path}`, { headers: { cookie } });
    if (!response.ok) throw new Error(`${path}: ${response.status}`);
    return response.headers.get('content-type')?.includes('json') ? response.json() : Buffer.from(await response.arrayBuffer());
  };
  return {
    get,
    // Every incident with this title, in full.
    async incidentsTitled(title) {
      const list = await get(`/api/v1/incidents?q=${encodeURIComponent(title)}&limit=200`);
      const items = (list.incidents || []).filter((i) => i.title === title);
      return Promise.all(items.map((i) => get(`/api/v1/incidents/${i.id}`)));
    },
  };
}

// Signs the phone in at the hub's HTTPS address.
export async function signIn(page, origin, password = WORKER_PASSWORD) {
  await page.goto(`${origin}/login`);
  await page.locator('#login-username').fill(WORKER);
  await page.locator('#login-password').fill(password);
  await page.locator('#login-form button[type=submit]').click();
  await page.locator('#user-name').waitFor({ timeout: 20000 });
}

function derToPem(der) {
  const lines = der.toString('base64').match(/.{1,64}/g).join('\n');
  return `-----BEGIN CERTIFICATE-----\n${lines}\n-----END CERTIFICATE-----\n`;
}

// Sends a request the page made to the hub itself (trusting only the hub's CA, `hub.test` on
// loopback) and returns the answer's status and body: the hub commits it, and the caller decides
// whether the phone ever hears of it.
export async function forwardToHub(request, port, dir) {
  const headers = await request.allHeaders();
  const url = new URL(request.url());
  const body = request.postDataBuffer();
  return new Promise((resolve, reject) => {
    const r = httpsRequest({
      host: '127.0.0.1', port, servername: HOST, ca: derToPem(readFileSync(join(dir, 'ca.der'))), method: request.method(),
      path: url.pathname + url.search, headers: { ...headers, host: `${HOST}:${port}` },
    }, (response) => {
      const chunks = [];
      response.on('data', (c) => chunks.push(c));
      response.on('end', () => resolve({ status: response.statusCode, body: Buffer.concat(chunks) }));
    });
    r.on('error', reject);
    if (body) r.write(body);
    r.end();
  });
}
