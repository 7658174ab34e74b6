// The grid worker's phone, in Debian's headless Chromium over HTTPS with the hub's CA trusted through
// an NSS database (no certificate error is ignored, so the secure-context features are real): a
// report made offline with two photos survives a reload and closing the browser and arrives once with
// both photos byte-identical to the downsized ones; a response lost after the hub committed is retried
// into the same incident; a camera photo crosses a 400 kbit/s, 400 ms link through a proxy that cuts
// every connection after 300 KB; an expired session holds the outbox until she signs in again; and the
// position is saved. Run by tests/run.sh; E2E_NODE_BIN names the binary.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import {
  startHub, trustingHome, launchPhone, emulateLink, cuttingProxy, cameraPhoto, outboxPhotos, adminClient,
  signIn, forwardToHub, HOST, POSITION, WORKER, WORKER_PASSWORD,
} from './phone-kit.mjs';

const BIN = process.env.E2E_NODE_BIN;
let dir;
let hub;
let home;
let origin;
let admin;

before(async () => {
  assert.ok(BIN, 'set E2E_NODE_BIN to the township-node binary');
  dir = mkdtempSync(join(tmpdir(), 'township-phone-'));
  hub = await startHub(BIN, dir);
  home = await trustingHome(hub.base, dir);
  origin = `https://${HOST}:${hub.httpsPort}`;
  admin = await adminClient(hub.base);
});

after(() => {
  hub?.child.kill('SIGTERM');
  if (dir && !process.env.KEEP_E2E) rmSync(dir, { recursive: true, force: true });
});

// Fills the report form (the category select keeps its first choice).
async function fillReport(page, title) {
  await page.locator('#r-title').fill(title);
  await page.locator('#r-description').fill('河堤边有一段护栏倒了，夜里看不清。');
  await page.locator('#r-area').fill('330723001001');
  await page.locator('#r-place').fill('王宅村东头河堤');
}

// Waits until the service worker controls the page, so the app opens without the network.
async function controlled(page) {
  await page.evaluate(() => navigator.serviceWorker.ready);
  if (!(await page.evaluate(() => Boolean(navigator.serviceWorker.controller)))) await page.reload();
  await page.waitForFunction(() => Boolean(navigator.serviceWorker.controller), null, { timeout: 20000 });
}

async function waitSent(page, title, timeout) {
  // Inside the app, as a person would: a page load would cut off a send under way.
  const link = page.locator('#nav a[href="/outbox"]');
  if (await link.isVisible().catch(() => false)) await link.click();
  else await page.goto(`${origin}/outbox`).catch(() => {});
  try {
    await page.locator(`#outbox-sent li[data-state="sent"]:has-text("${title}")`).waitFor({ timeout });
  } catch (e) {
    throw new Error(`not sent: ${await page.locator('main').innerText().catch(() => '?')}`, { cause: e });
  }
}

test('offline with two photos, reloaded, browser closed and reopened, back online: one incident, both photos as downsized, the position saved', async () => {
  // The village link: a proxy that can go down for the page and its service worker alike.
  const link = await cuttingProxy(hub.httpsPort, Infinity);
  const origin = `https://${HOST}:${link.port}`;
  const offline = async (phone, value) => {
    link.setDown(value);
    await phone.setOffline(value);
  };
  const profile = join(dir, 'profile-offline');
  let phone = await launchPhone(profile, home);
  let page = phone.pages()[0] || await phone.newPage();
  await signIn(page, origin);
  await page.goto(`${origin}/incidents/new`);
  await controlled(page);
  assert.equal(await page.evaluate(() => window.isSecureContext), true, 'HTTPS with a trusted CA is a secure context');

  // Location works on the HTTPS origin.
  await page.locator('#r-locate').click();
  await page.locator('#r-location').filter({ hasText: String(POSITION.latitude).slice(0, 6) }).waitFor({ timeout: 15000 });

  const photos = [await cameraPhoto(page, 4000, 3000), await cameraPhoto(page, 3000, 4000, 0.9)];
  photos.forEach((bytes, i) => writeFileSync(join(dir, `camera-${i}.jpg`), bytes));
  assert.ok(photos[0].length > 2_000_000, `a camera-sized photo (${photos[0].length} bytes)`);

  // The list she looked at while online stays readable offline, marked with its age.
  await page.goto(`${origin}/incidents`);
  await page.locator('#offline-note').waitFor({ state: 'attached', timeout: 20000 });
  await page.waitForLoadState('networkidle');
  await page.goto(`${origin}/incidents/new`);
  await page.locator('#r-title').waitFor();

  await offline(phone, true);
  const title = '护栏倒塌离线上报';
  await fillReport(page, title);
  await page.locator('#r-photos').setInputFiles([join(dir, 'camera-0.jpg'), join(dir, 'camera-1.jpg')]);
  await page.locator('#r-photo-list li').nth(1).waitFor({ timeout: 30000 });
  await page.locator('#r-submit').click();
  await page.locator('#outbox-list li[data-kind="report"]').first().waitFor({ timeout: 30000 });
  assert.notEqual(await page.locator('#outbox-count').getAttribute('hidden'), '', 'the header counts it');
  assert.match(await page.locator('#outbox-count').innerText(), /1/);

  // The downsized photos as queued: longest side at most 1,600 px, far smaller than the originals.
  const queued = await outboxPhotos(page);
  assert.equal(queued.length, 2);
  for (const p of queued) {
    assert.ok(Math.max(p.width, p.height) <= 1600, `downsized to ${p.width}x${p.height}`);
    assert.ok(p.size < 1_000_000, `${p.size} bytes`);
  }

  // Reload offline: the app opens from the phone and the item is still there.
  await page.reload();
  await page.locator('#outbox-list li[data-kind="report"]').first().waitFor({ timeout: 20000 });
  // Close the browser and open it again, still offline.
  await phone.close();
  phone = await launchPhone(profile, home);
  await offline(phone, true);
  page = phone.pages()[0] || await phone.newPage();
  await page.goto(`${origin}/outbox`);
  await page.locator('#outbox-list li[data-kind="report"]').first().waitFor({ timeout: 20000 });
  assert.equal((await admin.incidentsTitled(title)).length, 0, 'nothing reached the hub while offline');
  await page.locator('#nav a[href="/incidents"]').click();
  await page.locator('#offline-note').waitFor({ state: 'visible', timeout: 20000 })
    .catch(async (e) => { throw new Error(`offline list: ${await page.locator('main').innerText()}`, { cause: e }); });
  assert.match(await page.locator('#offline-note').innerText(), /离线/);
  await page.locator('#nav a[href="/outbox"]').click();

  // Back online: sent once, with both photos byte-identical to the downsized ones.
  await offline(phone, false);
  await page.locator(`#outbox-sent li[data-state="sent"]:has-text("${title}")`).waitFor({ timeout: 60000 });
  const incidents = await admin.incidentsTitled(title);
  assert.equal(incidents.length, 1, 'exactly one incident');
  const [incident] = incidents;
  const attached = incident.attachments.map((a) => a.sha256).sort();
  assert.deepEqual(attached, queued.map((p) => p.sha256).sort(), 'both photos, byte-identical to the downsized versions');
  assert.ok(Math.abs(incident.location.lat - POSITION.latitude) < 1e-5, JSON.stringify(incident.location));
  assert.ok(Math.abs(incident.location.lon - POSITION.longitude) < 1e-5);
  await phone.close();
  await link.close();
});

test('a response lost after the hub committed is retried into the same incident', async () => {
  const phone = await launchPhone(join(dir, 'profile-lost'), home, { serviceWorkers: 'block' });
  const page = phone.pages()[0] || await phone.newPage();
  await signIn(page, origin);
  let dropped = 0;
  // The request reaches the hub and is committed; its answer never reaches the phone.
  await page.route('**/api/v1/incidents', async (route) => {
    if (route.request().method() === 'POST' && dropped === 0) {
      dropped += 1;
      const answer = await forwardToHub(route.request(), hub.httpsPort, dir);
      assert.equal(answer.status, 201, answer.body.toString());
      await route.abort('connectionreset');
      return;
    }
    await route.continue();
  });
  await page.goto(`${origin}/incidents/new`);
  const title = '回应丢失重发测试';
  await fillReport(page, title);
  await page.locator('#r-submit').click();
  await waitSent(page, title, 90000);
  assert.equal(dropped, 1);
  assert.equal((await admin.incidentsTitled(title)).length, 1, 'still one incident');
  await phone.close();
});

test('a camera photo crosses a 400 kbit/s, 400 ms link that is cut every 300 KB', async () => {
  const proxy = await cuttingProxy(hub.httpsPort, 300 * 1024);
  const slowOrigin = `https://${HOST}:${proxy.port}`;
  const phone = await launchPhone(join(dir, 'profile-slow'), home);
  const page = phone.pages()[0] || await phone.newPage();
  try {
    await signIn(page, slowOrigin);
    await page.goto(`${slowOrigin}/incidents/new`);
    const photo = await cameraPhoto(page, 4608, 3456, 0.95);
    writeFileSync(join(dir, 'camera-5mb.jpg'), photo);
    assert.ok(photo.length > 5_000_000, `a 5 MB camera photo (${photo.length} bytes)`);
    await emulateLink(page, 400, 400);
    const title = '慢速链路照片上报';
    await fillReport(page, title);
    await page.locator('#r-photos').setInputFiles(join(dir, 'camera-5mb.jpg'));
    await page.locator('#r-photo-list li').first().waitFor({ timeout: 30000 });
    const started = Date.now();
    await page.locator('#r-submit').click();
    await page.locator('#outbox-list li, #outbox-sent li, h1').first().waitFor({ timeout: 60000 });
    await page.locator(`#outbox-sent li[data-state="sent"]:has-text("${title}")`).waitFor({ timeout: 240000 })
      .catch(async (e) => {
        await page.goto(`${slowOrigin}/outbox`);
        await page.locator(`#outbox-sent li[data-state="sent"]:has-text("${title}")`).waitFor({ timeout: 240000 });
        return e;
      });
    const seconds = (Date.now() - started) / 1000;
    const [incident] = await admin.incidentsTitled(title);
    assert.equal(incident.attachments.length, 1);
    assert.ok(proxy.stats.cuts > 0, 'the proxy did cut connections');
    console.log(`phone: ${(photo.length / 1e6).toFixed(1)} MB camera photo sent over 400 kbit/s, 400 ms, cut every 300 KB: ` +
      `${seconds.toFixed(1)} s to "sent" (${incident.attachments[0].size} bytes after downsizing, ${proxy.stats.cuts} cuts)`);
  } finally {
    await phone.close();
    await proxy.close();
  }
});

test('an expired session holds the outbox until she signs in again: nothing lost, nothing doubled', async () => {
  const phone = await launchPhone(join(dir, 'profile-expiry'), home);
  const page = phone.pages()[0] || await phone.newPage();
  await signIn(page, origin);
  await page.goto(`${origin}/incidents/new`);
  await controlled(page);
  // The form is on screen before the link goes (pages load on first use; this test is about the
  // session ending, not about a page cut off while it loads).
  await page.locator('#r-title').waitFor();
  await phone.setOffline(true);
  const title = '会话过期后补发';
  await fillReport(page, title);
  await page.locator('#r-submit').click();
  await page.locator('#outbox-list li[data-kind="report"]').first().waitFor({ timeout: 20000 });
  // Her session ends on the hub (a new password ends every session).
  const newPassword = `${WORKER_PASSWORD}-2`;
  writeFileSync(join(dir, 'worker2.pw'), `${newPassword}\n`);
  execFileSync(BIN, ['user', 'passwd', '--data-dir', hub.data, '--username', WORKER, '--password-file', join(dir, 'worker2.pw')],
    { env: { PATH: process.env.PATH } });
  await phone.setOffline(false);
  await page.locator('#outbox-list li[data-state="auth"]').waitFor({ timeout: 30000 });
  await page.locator('#outbox-auth').waitFor({ state: 'visible', timeout: 10000 });
  assert.equal((await admin.incidentsTitled(title)).length, 0);
  await signIn(page, origin, newPassword);
  await waitSent(page, title, 60000);
  assert.equal((await admin.incidentsTitled(title)).length, 1);
  await phone.close();
});
