// The outbox's browser-free rules (ui/js/outbox-logic.js) and the plain-JavaScript SHA-256
// (ui/js/sha256.js): ids, keys, order, what answers mean, backoff, the tus headers. Run with
// `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');

// Loaded as modules from their text, as i18n.test.mjs does: ui/ has no package.json saying .js is ESM.
async function load(name) {
  const source = readFileSync(join(UI, 'js', name), 'utf8');
  return import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);
}
const logic = await load('outbox-logic.js');
const { Sha256, sha256Hex } = await load('sha256.js');

test('UUIDv7: the time, version 7, variant 10, random bits', () => {
  const now = Date.UTC(2026, 11, 1, 3, 4, 5, 678);
  const fixed = (b) => b.fill(0xff);
  const id = logic.uuidv7(now, fixed);
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(logic.uuidv7Time(id), now);
  assert.equal(id.slice(0, 13), now.toString(16).padStart(12, '0').replace(/^(.{8})/, '$1-'));
  assert.equal(id[14], '7');
  assert.equal(id[19], 'b', 'variant bits 10 with the random bits all ones');
  assert.equal(logic.uuidv7(now, (b) => b.fill(0))[19], '8');
  assert.ok(logic.isUuidv7(logic.uuidv7()));
  const many = new Set(Array.from({ length: 1000 }, () => logic.uuidv7(now)));
  assert.equal(many.size, 1000, 'random bits differ within one millisecond');
  // Sorts by time as text, which the node's range check and the ids' order rely on.
  assert.ok(logic.uuidv7(now) < logic.uuidv7(now + 1));
  assert.equal(logic.isUuidv7(logic.uuidv4()), false);
  assert.match(logic.uuidv4(), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(logic.uuidv7Time('not-a-uuid'), null);
});

test('idempotency keys: visible ASCII, 1 to 200 characters; step keys stay valid', () => {
  const key = logic.uuidv4();
  assert.ok(logic.isValidKey(key));
  assert.ok(!logic.isValidKey(''));
  assert.ok(!logic.isValidKey('with space'));
  assert.ok(!logic.isValidKey('中文'));
  assert.ok(!logic.isValidKey('x'.repeat(201)));
  assert.ok(logic.isValidKey('x'.repeat(200)));
  const step = logic.stepKey(key, 'p0', 3);
  assert.equal(step, `${key}.p0.g3`);
  assert.ok(logic.isValidKey(step));
  assert.notEqual(logic.stepKey(key, 'p0', 0), logic.stepKey(key, 'p0', 1), 'a new upload gets a new key');
  assert.notEqual(logic.stepKey(key, 'p0'), logic.stepKey(key, 'a0'), 'creating and attaching differ');
});

test('backoff: 2 s doubling to 60 s, with jitter', () => {
  const at = (n, r) => logic.backoffMs(n, () => r);
  assert.equal(at(1, 0.5), 2000);
  assert.equal(at(2, 0.5), 4000);
  assert.equal(at(3, 0.5), 8000);
  assert.equal(at(6, 0.5), 60000);
  assert.equal(at(50, 0.5), 60000);
  assert.equal(at(1, 0), 1600);
  assert.equal(at(1, 1), 2400);
  for (let n = 1; n < 40; n++) {
    const ms = logic.backoffMs(n);
    assert.ok(ms >= 1600 && ms <= 60000, `attempt ${n}: ${ms}`);
  }
  assert.equal(at(0, 0.5), 2000, 'a missing count is the first retry');
});

test('answers: what each means for the item', () => {
  const c = logic.classify;
  assert.equal(c(201, {}), 'ok');
  assert.equal(c(200, {}), 'ok');
  assert.equal(c(204, null, 'patch'), 'ok');
  assert.equal(c(0, null), 'retry', 'no answer');
  assert.equal(c(401, { title: 'Unauthorized' }), 'auth');
  assert.equal(c(403, { code: 'csrf_missing', detail: 'missing or wrong X-CSRF-Token' }), 'csrf');
  assert.equal(c(403, { code: 'forbidden', detail: 'csrf in words only' }), 'refuse');
  assert.equal(c(403, { detail: 'this action is not allowed now' }), 'refuse');
  for (const s of [408, 429, 500, 502, 503, 504]) assert.equal(c(s, {}), 'retry', String(s));
  assert.equal(c(409, { code: 'still_processing', detail: 'a request with this Idempotency-Key is still being processed; try again shortly' }), 'retry');
  assert.equal(c(409, { detail: 'this id belongs to another record' }), 'refuse');
  assert.equal(c(409, {}, 'patch'), 'offset');
  assert.equal(c(460, {}, 'patch'), 'checksum');
  assert.equal(c(404, {}, 'patch'), 'gone');
  assert.equal(c(410, {}, 'head'), 'gone');
  assert.equal(c(404, {}, 'attach'), 'attach-missing');
  assert.equal(c(409, { detail: 'upload x has 5 of 9 bytes; finish it first' }, 'attach'), 'offset');
  assert.equal(c(409, { code: 'still_processing', detail: 'a request with this Idempotency-Key is still being processed; try again shortly' }, 'attach'), 'retry');
  assert.equal(c(415, {}, 'patch'), 'refuse', 'the node sniffed the finished file and does not take it');
  assert.equal(c(404, {}, 'request'), 'refuse');
  for (const s of [400, 413, 415, 422]) assert.equal(c(s, {}), 'refuse', String(s));
  assert.deepEqual(logic.errorOf(400, { title: 'Bad Request', detail: 'title is 1 to 100 characters', field: 'title', status: 400, type: 'about:blank', code: 'text_length', params: { field: 'title', min: 1, max: 100 } }),
    { status: 400, code: 'text_length', params: { field: 'title', min: 1, max: 100 }, message: 'title is 1 to 100 characters' });
  assert.deepEqual(logic.errorOf(0, null), { status: 0, code: null, params: {}, message: '' });
  assert.deepEqual(logic.errorOf(400, { code: 7, params: [1] }), { status: 400, code: null, params: {}, message: '' }, 'garbage from a proxy is not a code');
  assert.equal(logic.refusalKey(413), 'outbox.refused.413');
  assert.equal(logic.refusalKey(418), 'outbox.refused.other');
});

test('after an attempt: sent, refused, signed out, or waiting with a growing wait', () => {
  const item = { state: 'sending', attempts: 2 };
  const now = 1_000_000;
  const half = () => 0.5;
  assert.deepEqual(logic.afterAttempt(item, 'ok', { now }), { state: 'sent', sentMs: now, progress: 1, error: null, attempts: 0, nextAttemptMs: 0 });
  const err = { status: 400, code: 'title', message: 'bad' };
  assert.deepEqual(logic.afterAttempt(item, 'refuse', { now, error: err }), { state: 'refused', error: err, nextAttemptMs: 0 });
  assert.equal(logic.afterAttempt(item, 'auth', { now }).state, 'auth');
  const waiting = logic.afterAttempt(item, 'retry', { now, random: half });
  assert.deepEqual(waiting, { state: 'waiting', attempts: 3, nextAttemptMs: now + 8000, error: null });
  const told = logic.afterAttempt(item, 'retry', { now, random: half, retryAfterMs: 60000 });
  assert.equal(told.nextAttemptMs, now + 60000, 'the node\'s Retry-After wins over a shorter backoff');
  assert.equal(logic.afterAttempt(item, 'retry', { now, random: half, retryAfterMs: 1e9 }).nextAttemptMs, now + 600000);
  assert.equal(logic.retryAfterMs('60'), 60000);
  assert.equal(logic.retryAfterMs('Wed, 21 Oct 2015 07:28:00 GMT'), 0);
  assert.equal(logic.retryAfterMs(null), 0);
  const moved = logic.afterAttempt(item, 'retry', { now, random: half, progressed: true });
  assert.equal(moved.attempts, 1, 'progress resets the backoff');
  assert.equal(moved.nextAttemptMs, now + 2000);
});

test('order: strictly by seq, per person; refused items stop blocking; sign-in blocks all', () => {
  const now = 5000;
  const items = [
    { id: 'c', seq: 3, user: 'wang', state: 'waiting' },
    { id: 'a', seq: 1, user: 'wang', state: 'sent' },
    { id: 'b', seq: 2, user: 'wang', state: 'waiting', nextAttemptMs: 9000 },
    { id: 'x', seq: 0, user: 'li', state: 'waiting' },
  ];
  assert.deepEqual(logic.nextToSend(items, 'wang', now), { item: null, waitUntil: 9000 });
  assert.equal(logic.nextToSend(items, 'wang', now, true).item.id, 'b', 'forced: the head, never the one behind it');
  assert.equal(logic.nextToSend(items, 'wang', 9000).item.id, 'b');
  assert.equal(logic.nextToSend(items, 'li', now).item.id, 'x');
  assert.deepEqual(logic.nextToSend(items, null, now), { item: null, blocked: 'auth' });
  items[2].state = 'refused';
  assert.equal(logic.nextToSend(items, 'wang', now).item.id, 'c');
  items[0].state = 'auth';
  assert.deepEqual(logic.nextToSend(items, 'wang', now), { item: null, blocked: 'auth' });
  items[0].state = 'sent';
  assert.deepEqual(logic.nextToSend(items, 'wang', now), { item: null });
  // A 'sending' item left by a reload is the head again.
  assert.equal(logic.nextToSend([{ id: 's', seq: 1, user: 'wang', state: 'sending' }], 'wang', now).item.id, 's');
});

test('the header: what needs attention, when to ask for a sign-in, what to prune', () => {
  const now = Date.UTC(2026, 11, 10);
  const items = [
    { id: '1', user: 'wang', state: 'waiting' },
    { id: '2', user: 'wang', state: 'refused' },
    { id: '3', user: 'wang', state: 'sent', sentMs: now - 1000 },
    { id: '4', user: 'wang', state: 'sent', sentMs: now - logic.KEEP_SENT_MS - 1 },
    { id: '5', user: 'li', state: 'auth' },
  ];
  assert.equal(logic.attentionCount(items, 'wang'), 2);
  assert.equal(logic.attentionCount(items, 'li'), 1);
  assert.equal(logic.attentionCount(items, null), 3, 'signed out: the phone still says work waits');
  assert.equal(logic.needsSignIn(items, 'wang'), false);
  assert.equal(logic.needsSignIn(items, 'li'), true);
  assert.equal(logic.needsSignIn(items, null), true);
  assert.equal(logic.needsSignIn([{ user: 'a', state: 'sent' }], null), false);
  assert.deepEqual(logic.expiredIds(items, now), ['4']);
});

test('a retry after a refusal gets a new key; after a lost connection it keeps its key', () => {
  const refused = { state: 'refused', idempotencyKey: 'k1', error: { status: 422 }, photos: [{ restarts: 2, gone: 1, offset: 5 }] };
  const r = logic.retryFields(refused, 'k2');
  assert.equal(r.idempotencyKey, 'k2');
  assert.deepEqual(r.previousKeys, ['k1']);
  assert.deepEqual(r.photos, [{ restarts: 0, gone: 0, offset: 5 }]);
  assert.equal(r.state, 'waiting');
  const waiting = logic.retryFields({ state: 'waiting', idempotencyKey: 'k1', error: { status: 0 } }, 'k2');
  assert.equal(waiting.idempotencyKey, undefined);
  const auth = logic.retryFields({ state: 'auth', idempotencyKey: 'k1', error: { status: 401 } }, 'k2');
  assert.equal(auth.idempotencyKey, undefined, '401 answers are not kept by the node');
});

test('progress counts confirmed bytes and bytes in flight over all photos', () => {
  const item = { state: 'sending', mainDone: true, photos: [{ size: 1000, offset: 0, attached: true }, { size: 3000, offset: 1000 }] };
  assert.equal(logic.itemProgress(item), 0.5);
  assert.equal(logic.itemProgress(item, 1000), 0.75);
  assert.equal(logic.itemProgress(item, 99999), 1);
  assert.equal(logic.itemProgress({ state: 'waiting', photos: [] }), 0);
  assert.equal(logic.itemProgress({ state: 'waiting', mainDone: true }), 1);
  assert.equal(logic.itemProgress({ state: 'sent' }), 1);
  assert.equal(logic.photoProgress({ size: 3000, offset: 1000 }, 500), 0.5);
  assert.equal(logic.photoProgress({ size: 0 }), 0);
});

test('base64 metadata: UTF-8 names, round trip, garbage refused', () => {
  assert.equal(logic.base64(''), '');
  assert.equal(logic.base64('f'), 'Zg==');
  assert.equal(logic.base64('fo'), 'Zm8=');
  assert.equal(logic.base64('foo'), 'Zm9v');
  for (const s of ['IMG_1001.jpg', '桥头护栏.jpg', 'image/jpeg', 'a'.repeat(97)]) {
    assert.equal(logic.base64(s), Buffer.from(s).toString('base64'));
    assert.equal(logic.unbase64(logic.base64(s)), s);
  }
  const bytes = randomBytes(50);
  assert.equal(logic.base64(bytes), bytes.toString('base64'));
  assert.equal(logic.unbase64('%%%'), null);
  assert.equal(logic.unbase64('/w=='), null, 'not UTF-8');
  const sha = 'ab'.repeat(32);
  const header = logic.uploadMetadata({ name: '护栏.jpg', type: 'image/jpeg', sha256: sha });
  assert.equal(header, `filename ${Buffer.from('护栏.jpg').toString('base64')},content_type ${Buffer.from('image/jpeg').toString('base64')},sha256 ${Buffer.from(sha).toString('base64')}`);
  assert.deepEqual(logic.parseMetadata(header), { filename: '护栏.jpg', content_type: 'image/jpeg', sha256: sha });
  assert.deepEqual(logic.parseMetadata('flag,empty ,bad %%'), { flag: '', empty: '' });
});

test('tus headers: creation, patch, offsets, the upload address', () => {
  const h = logic.createHeaders({ size: 123456, name: 'a.jpg', type: 'image/jpeg', sha256: 'ff', csrf: 'tok', key: 'k.p0.g0' });
  assert.deepEqual(Object.keys(h).sort(), ['Idempotency-Key', 'Tus-Resumable', 'Upload-Length', 'Upload-Metadata', 'X-CSRF-Token']);
  assert.equal(h['Tus-Resumable'], '1.0.0');
  assert.equal(h['Upload-Length'], '123456');
  const p = logic.patchHeaders({ offset: 262144, csrf: 'tok' });
  assert.deepEqual(p, { 'Tus-Resumable': '1.0.0', 'Content-Type': 'application/offset+octet-stream', 'Upload-Offset': '262144', 'X-CSRF-Token': 'tok' });
  assert.equal(logic.parseOffset('0'), 0);
  assert.equal(logic.parseOffset(' 42 '), 42);
  for (const bad of [null, undefined, '', '-1', '1.5', '1e3', 'abc', '99999999999999999']) assert.equal(logic.parseOffset(bad), null, String(bad));
  const origin = 'https://node.example:8443';
  assert.equal(logic.uploadPath('/api/v1/uploads/abc123', origin), '/api/v1/uploads/abc123');
  assert.equal(logic.uploadPath('https://node.example:8443/api/v1/uploads/abc123', origin), '/api/v1/uploads/abc123');
  assert.equal(logic.uploadPath('https://evil.example/api/v1/uploads/abc123', origin), null);
  assert.equal(logic.uploadPath('/api/v1/incidents/abc', origin), null);
  assert.equal(logic.uploadPath('/api/v1/uploads/', origin), null);
  assert.equal(logic.uploadPath('/api/v1/uploads/a/b', origin), null);
  assert.equal(logic.uploadPath(null, origin), null);
  assert.equal(logic.uploadId('/api/v1/uploads/abc123'), 'abc123');
  assert.deepEqual(logic.nextChunk(0, 600000), [0, 262144]);
  assert.deepEqual(logic.nextChunk(524288, 600000), [524288, 600000]);
  assert.deepEqual(logic.restartedPhoto({ uploadUrl: '/api/v1/uploads/x', offset: 9, gen: 1, sha256: 's' }), { uploadUrl: null, offset: 0, gen: 2, sha256: 's' });
});

test('SHA-256 in JavaScript matches the standard, fed whole or in pieces', () => {
  assert.equal(sha256Hex(new Uint8Array(0)), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(sha256Hex(new TextEncoder().encode('abc')), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  for (const size of [1, 55, 56, 63, 64, 65, 119, 120, 1000, 300000]) {
    const data = randomBytes(size);
    const expected = createHash('sha256').update(data).digest('hex');
    assert.equal(sha256Hex(data), expected, `size ${size}`);
    const pieces = new Sha256();
    for (let i = 0; i < size; i += 7777) pieces.update(data.subarray(i, i + 7777));
    assert.equal(pieces.hex(), expected, `size ${size} in pieces`);
  }
});

test('every kind and refusal the outbox names has its words in both languages', async () => {
  const dict = async (name) => (await load(`i18n/${name}`)).default;
  const KINDS = ['report', 'comment', 'transition', 'rating', 'photos'];
  for (const [language, d] of [['zh-CN', await dict('zh-CN.js')], ['en', await dict('en.js')]]) {
    for (const kind of KINDS) assert.ok(d[`outbox.kind.${kind}`], `${language}: outbox.kind.${kind}`);
    for (const status of [400, 401, 403, 404, 409, 413, 415, 418, 422, 460, 500]) {
      assert.ok(d[logic.refusalKey(status)], `${language}: ${logic.refusalKey(status)}`);
    }
    for (const state of logic.STATES) assert.ok(d[`outbox.state.${state}`], `${language}: outbox.state.${state}`);
    assert.ok(d['common.timeout'], `${language}: common.timeout`);
  }
  assert.equal((await dict('zh-CN.js'))['outbox.refused.422'], '重复提交内容不一致');
});
