// The broadcast page's browser-free rules (ui/js/broadcast-logic.js): what the node speaks, zones by
// village, health in words, the typed confirmation and the exact order body. Run with
// `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');

// Loaded as a module from its text, as i18n.test.mjs does: ui/ has no package.json saying .js is ESM.
const source = readFileSync(join(UI, 'js', 'broadcast-logic.js'), 'utf8');
const logic = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

test('the spoken text says test and exercise before and after, as the node speaks it', () => {
  assert.equal(logic.spokenText('live', '请立即转移'), '请立即转移');
  assert.equal(logic.spokenText('test', '请立即转移'), '测试，这是测试广播。请立即转移。测试广播结束。');
  assert.equal(logic.spokenText('test', '请立即转移。'), '测试，这是测试广播。请立即转移。测试广播结束。');
  assert.equal(logic.spokenText('exercise', '请立即转移'), '演练，这是演练广播。请立即转移。演练广播结束。');
});

test('the prefix matches the node\'s spoken_text in src/broadcast/mod.rs', () => {
  const rust = readFileSync(join(UI, '..', 'src', 'broadcast', 'mod.rs'), 'utf8');
  assert.ok(rust.includes('"测试，这是测试广播。{body}。测试广播结束。"'), 'test wording changed in the node');
  assert.ok(rust.includes('"演练，这是演练广播。{body}。演练广播结束。"'), 'exercise wording changed in the node');
});

const zones = [
  { id: 'wangzhai', name: '王宅村', area: '330723001001', outputs: [
    { id: 'wz-relay', kind: 'relay', test: false, health: { status: 'ok' } },
    { id: 'wz-monitor', kind: 'audio', test: true, health: { status: 'ok' } },
  ] },
  { id: 'xishan', name: '西山村', area: '330723001002', outputs: [
    { id: 'xs-speaker', kind: 'speaker', test: false, health: { status: 'offline' } },
  ] },
  { id: 'wangzhai-school', name: '王宅小学', area: '330723001001', outputs: [] },
];

test('zones group by village in the configured order', () => {
  const groups = logic.groupZones(zones);
  assert.deepEqual(groups.map((g) => g.area), ['330723001001', '330723001002']);
  assert.deepEqual(groups[0].zones.map((z) => z.id), ['wangzhai', 'wangzhai-school']);
  assert.deepEqual(groups[1].zones.map((z) => z.id), ['xishan']);
  assert.deepEqual(logic.groupZones([]), []);
});

test('a test reaches only test outputs; health reads as words', () => {
  const zh = { ok: '正常', offline: '离线', error: '故障', unknown: '未知' };
  const words = (zone, mode) => logic.healthText(logic.healthCounts(logic.reachable(zone, mode)), (s) => zh[s]);
  assert.equal(words(zones[0], 'live'), '2/2 正常');
  assert.equal(words(zones[0], 'test'), '1/1 正常');
  assert.equal(words(zones[1], 'live'), '1 离线');
  assert.equal(logic.reachable(zones[1], 'exercise').length, 0);
  const mixed = logic.healthCounts([{ health: { status: 'ok' } }, { health: { status: 'error' } }, { health: null }]);
  assert.deepEqual(mixed, { total: 3, ok: 1, error: 1, offline: 0, unknown: 1 });
  assert.equal(logic.healthText(mixed, (s) => zh[s]), '1/3 正常 · 1 故障 · 1 未知');
});

test('a live broadcast is confirmed only by the exact number of zones', () => {
  assert.equal(logic.confirmMatches('3', 3), true);
  assert.equal(logic.confirmMatches(' 3 ', 3), true);
  assert.equal(logic.confirmMatches('３', 3), true, 'full-width digits from a Chinese IME count');
  assert.equal(logic.confirmMatches('03', 3), true);
  assert.equal(logic.confirmMatches('2', 3), false);
  assert.equal(logic.confirmMatches('', 3), false);
  assert.equal(logic.confirmMatches('3个', 3), false);
  assert.equal(logic.confirmMatches('3.0', 3), false);
  assert.equal(logic.confirmMatches('0', 0), false, 'nothing to confirm with no zones');
});

test('an order is stopped before sending when it lacks zones or content', () => {
  const ok = { text: '请转移', zones: [{}], hasAudio: false, repeat: 2 };
  assert.equal(logic.orderProblem(ok), null);
  assert.equal(logic.orderProblem({ ...ok, zones: [] }), 'zones');
  assert.equal(logic.orderProblem({ ...ok, text: '   ' }), 'text');
  assert.equal(logic.orderProblem({ ...ok, text: '', hasAudio: true }), null);
  assert.equal(logic.orderProblem({ ...ok, text: '字'.repeat(2001) }), 'text_long');
  assert.equal(logic.orderProblem({ ...ok, text: '😀'.repeat(2000) }), null, 'counted as the node counts, not UTF-16');
  assert.equal(logic.orderProblem({ ...ok, repeat: 0 }), 'repeat');
  assert.equal(logic.orderProblem({ ...ok, repeat: 11 }), 'repeat');
  assert.equal(logic.orderProblem({ ...ok, repeat: NaN }), 'repeat');
});

test('the order body is exactly what the API takes', () => {
  assert.deepEqual(
    logic.orderBody({ text: ' 请转移 ', zones: ['wangzhai'], mode: 'live', level: 'red', repeat: 2, warning: '', startAt: null, hasAudio: false }),
    { text: '请转移', zones: ['wangzhai'], mode: 'live', level: 'red', repeat: 2 });
  assert.deepEqual(
    logic.orderBody({ text: '请转移', zones: ['wangzhai', 'xishan'], mode: 'test', level: 'routine', repeat: 1, warning: 'w-1', startAt: '2026-05-01T08:00:00Z', hasAudio: false }),
    { text: '请转移', zones: ['wangzhai', 'xishan'], mode: 'test', level: 'routine', repeat: 1, warning: 'w-1', start_at: '2026-05-01T08:00:00Z' });
  // With an audio message the text stays out, so the node waits for the audio instead of speaking.
  assert.deepEqual(
    logic.orderBody({ text: '请转移', zones: ['wangzhai'], mode: 'live', level: 'orange', repeat: 2, hasAudio: true }),
    { zones: ['wangzhai'], mode: 'live', level: 'orange', repeat: 2 });
});

test('starting from a warning takes its headline, instruction, level and id, and never picks live', () => {
  const w = { id: 'w-1', level: 'orange', status: 'actual', headline: '熟溪街道暴雨橙色预警', instruction: '请沿河群众立即转移' };
  assert.deepEqual(logic.warningPrefill(w), { text: '熟溪街道暴雨橙色预警。请沿河群众立即转移', warning: 'w-1', level: 'orange' });
  assert.equal(logic.warningPrefill({ ...w, headline: '暴雨预警！' }).text, '暴雨预警！请沿河群众立即转移');
  assert.equal(logic.warningPrefill({ ...w, instruction: '' }).text, '熟溪街道暴雨橙色预警');
  assert.equal(logic.warningPrefill({ ...w, status: 'exercise' }).mode, 'exercise');
  assert.equal(logic.warningPrefill({ ...w, status: 'test' }).mode, 'test');
  assert.equal(logic.warningPrefill({ ...w, instruction: '字'.repeat(3000) }).text.length, 2000);
});

test('recordings are named by the recorder\'s type and only formats the node takes are recorded', () => {
  assert.equal(logic.recordingName('audio/webm;codecs=opus'), 'message.webm');
  assert.equal(logic.recordingName('audio/ogg;codecs=opus'), 'message.ogg');
  assert.equal(logic.recordingName(''), 'message.webm');
  assert.equal(logic.pickRecorderType((m) => m.startsWith('audio/ogg')), 'audio/ogg;codecs=opus');
  assert.equal(logic.pickRecorderType((m) => m === 'audio/webm'), 'audio/webm');
  assert.equal(logic.pickRecorderType(() => false), null, 'Safari\'s audio/mp4 only: no recording');
  assert.equal(logic.acceptableAudio({ name: 'msg.mp3', type: 'audio/mpeg' }), true);
  assert.equal(logic.acceptableAudio({ name: 'msg.WAV', type: '' }), true);
  assert.equal(logic.acceptableAudio({ name: 'photo.jpg', type: 'image/jpeg' }), false);
  assert.equal(logic.acceptableAudio({ name: 'msg.m4a', type: 'audio/mp4' }), false);
});

test('active broadcasts come first, newest first', () => {
  const { active, history } = logic.splitList([
    { id: 'a', state: 'finished', updated_ms: 5 },
    { id: 'b', state: 'playing', updated_ms: 1 },
    { id: 'c', state: 'requested', updated_ms: 3 },
    { id: 'd', state: 'cancelled', updated_ms: 9 },
  ]);
  assert.deepEqual(active.map((b) => b.id), ['c', 'b']);
  assert.deepEqual(history.map((b) => b.id), ['d', 'a']);
});

test('a correction reads as the node will play it', () => {
  assert.equal(logic.correctionText('请转移'), '更正：刚才播出的广播“请转移”有误，已经撤销，请不要按该广播行动。');
  const long = '字'.repeat(61);
  assert.ok(logic.correctionText(long).includes(`“${'字'.repeat(60)}……”`));
});

test('a start time goes out as RFC 3339 UTC, and an empty one not at all', () => {
  assert.equal(logic.startAtFrom(''), null);
  assert.equal(logic.startAtFrom('not a time'), undefined);
  assert.match(logic.startAtFrom('2026-05-01T08:00'), /^2026-0[45]-\d\dT\d\d:00:00Z$/);
  assert.equal(logic.clock(65000), '1:05');
});

test('daily times are read as typed, with Chinese punctuation, sorted and checked', () => {
  assert.deepEqual(logic.parseSchedule('18:00, 7:30，07:30、 25:00 noon'), { times: ['07:30', '18:00'], bad: ['25:00', 'noon'] });
  assert.deepEqual(logic.parseSchedule('07：30'), { times: ['07:30'], bad: [] });
  const body = logic.orderBody({ text: '节目', zones: ['a'], mode: 'live', level: 'routine', repeat: 1, schedule: ['07:30'] });
  assert.deepEqual(body.schedule, ['07:30']);
  assert.equal(logic.orderBody({ text: 'x', zones: ['a'], mode: 'live', level: 'red', repeat: 1, schedule: ['07:30'] }).schedule, undefined);
});

test('an order of the emergency-broadcast platform is known by the ids in its signed request', () => {
  // As GET /api/v1/broadcasts/{id} shows one (src/ebd/receive.rs `origin`, src/broadcast/mod.rs `transition_json`).
  const request = { id: 't1', action: 'request', actor: 'system', role: 'system', at_ms: 1, data: {
    ebd_ebm_id: '433072300000001010101012026120100001',
    ebd_ebdid: '10433072300000001010101010000000000000042',
    ebd_src: '43307230000000101010101',
    ebd_package: 'ab'.repeat(32),
  } };
  const start = { id: 't2', action: 'start', actor: 'system', role: 'system', at_ms: 2, data: {} };
  assert.deepEqual(logic.platformOrigin({ transitions: [request, start] }), {
    ebmId: '433072300000001010101012026120100001',
    src: '43307230000000101010101',
    ebdid: '10433072300000001010101010000000000000042',
  });
  // A rule's order is the node's own (system, no platform ids); a person's never counts as the platform's.
  assert.equal(logic.platformOrigin({ transitions: [{ ...request, data: {} }, start] }), null);
  assert.equal(logic.platformOrigin({ transitions: [{ ...request, actor: 'zhang', role: 'township_staff' }] }), null);
  assert.equal(logic.platformOrigin({ transitions: [{ ...request, data: { ebd_ebm_id: '' } }] }), null);
  assert.equal(logic.platformOrigin({ transitions: [{ ...request, data: undefined }] }), null);
  // A list row has no transitions; a missing sender stays missing rather than made up.
  assert.equal(logic.platformOrigin({ id: 'b', requester: 'system' }), null);
  assert.equal(logic.platformOrigin(null), null);
  assert.deepEqual(logic.platformOrigin({ transitions: [{ ...request, data: { ebd_ebm_id: 'x' } }] }), { ebmId: 'x', src: null, ebdid: null });
});
