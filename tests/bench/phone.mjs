// Figures for the grid worker's phone (README, Performance), in Debian's headless Chromium over HTTPS
// with the hub's CA trusted through NSS, on a DevTools-emulated village link (400 kbit/s, 400 ms):
//   1. the app shell: first load and repeat load (bytes over the wire, time until the sign-in form is
//      usable);
//   2. a report with a 12-megapixel camera photo: time to "sent" through the outbox (downsized on the
//      phone, resumable upload), side by side with the same photo sent whole as one multipart request
//      (what the app did before);
//   3. exactly-once delivery: SCHEDULES randomised schedules (default 1,000) of offline spells, answers
//      lost after the hub committed, and queued reports and comments, then every item counted at the hub.
// Run: tests/bench/phone.sh (builds the release binary, installs what it needs). SCHEDULES=N to change.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  startHub, trustingHome, launchPhone, emulateLink, cameraPhoto, adminClient, signIn, forwardToHub, HOST,
} from '../e2e/phone-kit.mjs';

const BIN = process.env.BENCH_NODE_BIN;
const SCHEDULES = Number(process.env.SCHEDULES || 1000);
const KBPS = 400;
const LATENCY = 400;

const dir = mkdtempSync(join(tmpdir(), 'township-phone-bench-'));
const hub = await startHub(BIN, dir);
const home = await trustingHome(hub.base, dir);
const origin = `https://${HOST}:${hub.httpsPort}`;
const admin = await adminClient(hub.base);

function kb(bytes) {
  return `${(bytes / 1024).toFixed(1)} KB`;
}

// Bytes a page load moved, from DevTools' own accounting (compressed, with headers).
function countBytes(cdp) {
  const seen = { bytes: 0, requests: 0, fromServiceWorker: 0 };
  cdp.on('Network.loadingFinished', (e) => { seen.bytes += e.encodedDataLength; seen.requests += 1; });
  cdp.on('Network.responseReceived', (e) => { if (e.response.fromServiceWorker) seen.fromServiceWorker += 1; });
  return seen;
}

async function shellLoads() {
  const phone = await launchPhone(join(dir, 'profile-shell'), home);
  const page = phone.pages()[0] || await phone.newPage();
  const cdp = await emulateLink(page, KBPS, LATENCY);
  const first = countBytes(cdp);
  let started = Date.now();
  await page.goto(`${origin}/login`);
  await page.locator('#login-username').waitFor({ state: 'visible' });
  const firstMs = Date.now() - started;
  const firstBytes = { ...first };
  // Let the service worker finish installing (it precaches the rest of the app), then come back.
  await page.evaluate(() => navigator.serviceWorker.ready);
  await page.waitForTimeout(1000);
  await page.close();
  const again = await phone.newPage();
  const cdp2 = await emulateLink(again, KBPS, LATENCY);
  const repeat = countBytes(cdp2);
  started = Date.now();
  await again.goto(`${origin}/login`);
  await again.locator('#login-username').waitFor({ state: 'visible' });
  const repeatMs = Date.now() - started;
  await phone.close();
  console.log(`shell first load: ${kb(firstBytes.bytes)} in ${firstBytes.requests} requests, usable after ${(firstMs / 1000).toFixed(2)} s`
    + ' (page requests as DevTools counts them, TLS set-up included; the service worker then fetches the files this page did not load, which the page does not see)');
  console.log(`shell repeat load: ${kb(repeat.bytes)} over the network, ${repeat.fromServiceWorker} answers from the phone, usable after ${(repeatMs / 1000).toFixed(2)} s`
    + ` (${(firstMs / repeatMs).toFixed(1)}x faster than the first)`);
}

async function photoSend() {
  const phone = await launchPhone(join(dir, 'profile-photo'), home);
  const page = phone.pages()[0] || await phone.newPage();
  await signIn(page, origin);
  await page.goto(`${origin}/incidents/new`);
  const photo = await cameraPhoto(page, 4000, 3000, 0.92);
  writeFileSync(join(dir, 'camera-12mp.jpg'), photo);
  await emulateLink(page, KBPS, LATENCY);
  const title = '千二百万像素照片上报';
  await page.locator('#r-title').fill(title);
  await page.locator('#r-area').fill('330723001001');
  await page.locator('#r-photos').setInputFiles(join(dir, 'camera-12mp.jpg'));
  const picked = Date.now();
  await page.locator('#r-photo-list li').first().waitFor();
  await page.waitForFunction(() => !document.getElementById('r-submit').disabled);
  const downsizeMs = Date.now() - picked;
  const started = Date.now();
  await page.locator('#r-submit').click();
  await page.locator('#nav a[href="/outbox"]').click().catch(() => {});
  await page.locator(`#outbox-sent li[data-state="sent"]:has-text("${title}")`).waitFor({ timeout: 300000 });
  const ms = Date.now() - started;
  const [incident] = await admin.incidentsTitled(title);
  const sent = incident.attachments[0].size;
  // The same photo sent whole, as one multipart request, on the same link.
  const csrf = await page.evaluate(async () => (await (await fetch('/api/v1/session')).json()).csrf_token);
  const started2 = Date.now();
  const outcome = await page.evaluate(async ({ id, csrf, b64 }) => {
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const form = new FormData();
    form.append('file', new Blob([raw], { type: 'image/jpeg' }), 'camera.jpg');
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      let sentBytes = 0;
      xhr.upload.onprogress = (e) => { sentBytes = e.loaded; };
      xhr.open('POST', `/api/v1/incidents/${id}/attachments`);
      xhr.setRequestHeader('X-CSRF-Token', csrf);
      xhr.onload = () => resolve({ status: xhr.status, sentBytes });
      xhr.onerror = () => resolve({ status: 0, sentBytes });
      xhr.send(form);
    });
  }, { id: incident.id, csrf, b64: photo.toString('base64') });
  const wholeMs = Date.now() - started2;
  await phone.close();
  console.log(`12 MP camera photo (${(photo.length / 1e6).toFixed(2)} MB) at ${KBPS} kbit/s, ${LATENCY} ms: downsized on the phone to ${kb(sent)} in ${(downsizeMs / 1000).toFixed(1)} s,`
    + ` report "sent" ${(ms / 1000).toFixed(1)} s after 提交`);
  console.log(`  the same photo sent whole in one request: HTTP ${outcome.status} after ${(wholeMs / 1000).toFixed(1)} s with ${(outcome.sentBytes / 1e6).toFixed(2)} MB of ${(photo.length / 1e6).toFixed(2)} MB sent`
    + (outcome.status === 201 ? ` (${(wholeMs / ms).toFixed(1)}x the outbox's time)` : ' (it never arrives)'));
}

// A seeded generator, so a failing schedule can be replayed with SEED.
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6D2B79F5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function exactlyOnce() {
  const seed = Number(process.env.SEED || 20261201);
  const random = rng(seed);
  const phone = await launchPhone(join(dir, 'profile-once'), home, { serviceWorkers: 'block' });
  const page = phone.pages()[0] || await phone.newPage();
  await signIn(page, origin);
  // One incident to comment on, made by the phone itself.
  const base = await page.evaluate(async () => {
    const session = await (await fetch('/api/v1/session')).json();
    const r = await fetch('/api/v1/incidents', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-csrf-token': session.csrf_token },
      body: JSON.stringify({ category: '环境卫生', title: '排程评论目标', area: '330723001001' }),
    });
    return (await r.json()).id;
  });
  // Answers lost after the hub committed: the hub gets the request, the phone gets a reset.
  let dropNext = 0;
  let dropped = 0;
  await page.route('**/api/v1/**', async (route) => {
    const method = route.request().method();
    if (method !== 'GET' && dropNext > 0) {
      dropNext -= 1;
      dropped += 1;
      try {
        const answer = await forwardToHub(route.request(), hub.httpsPort, dir);
        if (process.env.BENCH_DEBUG) console.log('forwarded', route.request().url(), answer.status, answer.body.toString().slice(0, 200));
      } catch (e) { if (process.env.BENCH_DEBUG) console.log('forward failed', e.message); }
      await route.abort('connectionreset');
      return;
    }
    await route.continue();
  });
  const version = await page.evaluate(() => document.querySelector('meta[name=ui-version]').content);
  const expected = { reports: [], comments: [] };
  let offlineSpells = 0;
  const started = Date.now();
  for (let i = 0; i < SCHEDULES; i += 1) {
    const r = random();
    if (r < 0.25) {
      await phone.setOffline(true);
      offlineSpells += 1;
    }
    if (random() < 0.3) dropNext += 1 + Math.floor(random() * 2);
    const report = random() < 0.2;
    const text = `${report ? '排程报告' : '排程评论'} ${i}`;
    await page.evaluate(async ({ version, report, text, base }) => {
      const outbox = await import(`/assets/${version}/js/outbox.js`);
      const logic = await import(`/assets/${version}/js/outbox-logic.js`);
      if (report) {
        const id = logic.uuidv7();
        await outbox.enqueue({ kind: 'report', label: text, method: 'POST', path: '/api/v1/incidents',
          body: { id, category: '环境卫生', title: text, area: '330723001001' }, incidentClientId: id });
      } else {
        await outbox.enqueue({ kind: 'comment', label: text, method: 'POST', path: `/api/v1/incidents/${base}/comments`,
          body: { text }, incidentId: base });
      }
    }, { version, report, text, base });
    (report ? expected.reports : expected.comments).push(text);
    await page.waitForTimeout(Math.floor(random() * 40));
    if (random() < 0.6) await phone.setOffline(false);
  }
  await phone.setOffline(false);
  // Everything sent: nothing waiting, sending or refused.
  const deadline = Date.now() + 900000;
  for (;;) {
    const open = await page.evaluate(async (version) => {
      const outbox = await import(`/assets/${version}/js/outbox.js`);
      outbox.flush({ force: false });
      return (await outbox.list()).filter((i) => i.state !== 'sent').length;
    }, version);
    if (open === 0) break;
    assert.ok(Date.now() < deadline, `${open} items never sent`);
    await page.waitForTimeout(1000);
  }
  const seconds = (Date.now() - started) / 1000;
  const debugItems = await page.evaluate(async (version) => (await (await import(`/assets/${version}/js/outbox.js`)).list()).map((i) => [i.label, i.state, i.result && JSON.stringify(i.result).slice(0, 80), i.error]), version);
  // Count at the hub.
  const incident = await admin.get(`/api/v1/incidents/${base}`);
  const comments = new Map();
  for (const c of incident.comments) comments.set(c.text, (comments.get(c.text) || 0) + 1);
  const reports = new Map();
  let cursor = '';
  for (;;) {
    const list = await admin.get(`/api/v1/incidents?q=${encodeURIComponent('排程报告')}&limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    for (const i of list.incidents) reports.set(i.title, (reports.get(i.title) || 0) + 1);
    if (!list.next_cursor) break;
    cursor = list.next_cursor;
  }
  let once = 0;
  const wrong = [];
  for (const text of expected.comments) (comments.get(text) === 1 ? once += 1 : wrong.push(`${text}: ${comments.get(text) || 0}`));
  for (const text of expected.reports) (reports.get(text) === 1 ? once += 1 : wrong.push(`${text}: ${reports.get(text) || 0}`));
  await phone.close();
  console.log(`exactly once: ${once} of ${SCHEDULES} items delivered exactly once (${expected.reports.length} reports, ${expected.comments.length} comments;`
    + ` ${offlineSpells} offline spells, ${dropped} answers lost after the hub committed; seed ${seed}; ${seconds.toFixed(0)} s)`);
  if (wrong.length) console.log(`  not exactly once: ${wrong.slice(0, 20).join('; ')}`);
  if (wrong.length && process.env.BENCH_DEBUG) console.log(JSON.stringify(debugItems).slice(0, 3000));
  assert.equal(once, SCHEDULES);
}

try {
  if (!process.env.ONLY || process.env.ONLY === 'shell') await shellLoads();
  if (!process.env.ONLY || process.env.ONLY === 'photo') await photoSend();
  if (!process.env.ONLY || process.env.ONLY === 'once') await exactlyOnce();
} finally {
  hub.child.kill('SIGTERM');
  if (!process.env.KEEP) rmSync(dir, { recursive: true, force: true });
}
