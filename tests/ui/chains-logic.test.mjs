// The nodes page's audit-chain rules (ui/js/chains-logic.js): what a chain's check says, broken ones
// first, the alarm's count, and how nodes not enrolled here are named. Run with `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');

// Loaded from their text, as i18n.test.mjs does: ui/ has no package.json saying .js is ESM.
const load = (path) => import(`data:text/javascript;base64,${Buffer.from(readFileSync(join(UI, 'js', path), 'utf8')).toString('base64')}`);
const logic = await load('chains-logic.js');
const texts = { 'zh-CN': (await load('i18n/zh-CN.js')).default, en: (await load('i18n/en.js')).default };

// A summary as the page writes it, filled in the way i18n.js fills placeholders.
function say(lang, summary) {
  return texts[lang][summary.key].replace(/\{([a-z_]+)\}/g, (whole, name) => (summary.params[name] ?? whole));
}

const A = 'a1b2c3d4e5f6a7b8c9d0';
const B = 'b1b2c3d4e5f6a7b8c9d0';
const V = 'f0e0d0c0b0a090807060';
const intact = { origin: A, entries: 120, signed_seq: 100, intact: true, broken_seq: null, problem: null, checked_ms: 1 };
const unsigned = { origin: B, entries: 7, signed_seq: 0, intact: true, broken_seq: null, problem: null, checked_ms: 1 };
const broken = { origin: V, entries: 41, signed_seq: 40, intact: false, broken_seq: 42, problem: 'entry 42 does not hash to its recorded hash', checked_ms: 1 };

test('a chain says intact with its counts, not received, or tampered with at an entry', () => {
  assert.equal(say('zh-CN', logic.chainSummary(intact)), '完整 · 已核 120 条，签名至 100');
  assert.equal(say('en', logic.chainSummary(intact)), 'Intact · 120 checked, signed up to 100');
  assert.equal(say('zh-CN', logic.chainSummary(unsigned)), '完整 · 已核 7 条，尚无签名');
  assert.equal(say('zh-CN', logic.chainSummary(null)), '未收到');
  assert.equal(logic.chainSummary(null).state, 'none');
  const s = logic.chainSummary(broken);
  assert.equal(s.state, 'broken');
  assert.equal(say('zh-CN', s), '已被篡改 · 第 42 条');
  assert.equal(say('en', s), 'Tampered with · entry 42');
  assert.equal(s.problem, broken.problem, 'the reason is shown as the node wrote it');
});

test('a broken chain without a position or a reason still says it was tampered with', () => {
  const s = logic.chainSummary({ ...broken, broken_seq: null, problem: '  ' });
  assert.equal(say('zh-CN', s), '已被篡改');
  assert.equal(s.problem, null);
});

test('broken chains come first, the rest keep the node\'s order', () => {
  assert.deepEqual(logic.brokenFirst([intact, unsigned, broken]).map((c) => c.origin), [V, A, B]);
  const nodes = [{ node_id: A, chain: null }, { node_id: B, chain: intact }, { node_id: V, chain: broken }];
  assert.deepEqual(logic.brokenFirst(nodes, (n) => n.chain).map((n) => n.node_id), [V, A, B]);
  assert.deepEqual(logic.brokenFirst(undefined), []);
});

test('the alarm counts broken chains and says one or several', () => {
  assert.equal(logic.countBroken([intact, broken, { ...broken, origin: B }]), 2);
  assert.equal(logic.countBroken([{ chain: broken }, { chain: null }], (n) => n.chain), 1);
  assert.equal(logic.countBroken(null), 0);
  const alarm = (lang, n) => texts[lang][logic.alarmKey(n)].replace('{n}', String(n));
  assert.equal(alarm('zh-CN', 3), '有 3 个节点的审计链被篡改');
  assert.equal(alarm('en', 1), 'The audit chain of 1 node has been tampered with');
  assert.equal(alarm('en', 2), 'The audit chains of 2 nodes have been tampered with');
});

test('a node is named as enrolled here, else by its id cut short', () => {
  const nodes = new Map([[A, { node_id: A, name: '熟溪街道' }]]);
  assert.deepEqual(logic.nodeLabel(A, null, nodes), { named: true, text: '熟溪街道', id: A });
  assert.deepEqual(logic.nodeLabel(A, '白洋街道', nodes), { named: true, text: '白洋街道', id: A });
  assert.deepEqual(logic.nodeLabel(V, null, nodes), { named: false, text: 'f0e0d0c0', id: V });
  assert.equal(logic.shortId(undefined), '');
});

test('via says direct, the relaying node, or nothing', () => {
  const nodes = new Map([[A, { node_id: A, name: '熟溪街道' }]]);
  assert.deepEqual(logic.viaLabel({ origin: A, via: A }, nodes), { kind: 'direct' });
  assert.deepEqual(logic.viaLabel({ origin: V, via: A }, nodes), { kind: 'node', named: true, text: '熟溪街道', id: A });
  assert.deepEqual(logic.viaLabel({ origin: V, via: B }, nodes), { kind: 'node', named: false, text: 'b1b2c3d4', id: B });
  assert.deepEqual(logic.viaLabel({ origin: V, via: null }, nodes), { kind: 'unknown' });
});
