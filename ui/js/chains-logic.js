// The nodes page's rules for the audit chains of the nodes below that need no browser: what a chain's
// check says (intact, broken, nothing received yet), broken ones first, and how a node that is not
// enrolled here (a village relayed by a township) is named. No imports, so the unit tests (tests/ui/)
// load it as it is. The texts are i18n keys with their parameters; ui/js/pages/nodes.js puts them on
// screen.

// A node id as it fits in a table cell; the full id goes in the title.
export const SHORT_ID = 8;

export function shortId(id) {
  return typeof id === 'string' ? id.slice(0, SHORT_ID) : '';
}

// 'none' (no entries from that node yet: the chain is null), 'broken' (the check failed somewhere:
// altered, re-signed or stripped) or 'intact'.
export function chainState(chain) {
  if (!chain) return 'none';
  return chain.intact === false ? 'broken' : 'intact';
}

// What a chain's check says, as { state, key, params, problem }: the key of its one-line text, and
// for a broken chain the node's reason (English, as the node wrote it; shown as it is).
export function chainSummary(chain) {
  const state = chainState(chain);
  if (state === 'none') return { state, key: 'nodes.chain_none', params: {}, problem: null };
  if (state === 'broken') {
    const seq = Number.isInteger(chain.broken_seq) ? chain.broken_seq : null;
    return {
      state,
      key: seq === null ? 'nodes.chain_broken_unknown' : 'nodes.chain_broken',
      params: { seq },
      problem: typeof chain.problem === 'string' && chain.problem.trim() ? chain.problem : null,
    };
  }
  const entries = Number(chain.entries) || 0;
  const signed = Number(chain.signed_seq) || 0;
  return {
    state,
    key: signed > 0 ? 'nodes.chain_intact' : 'nodes.chain_intact_unsigned',
    params: { entries, signed },
    problem: null,
  };
}

// A copy with the broken chains first, the rest in the order given (the node's). `chainOf` picks the
// chain out of an item: a node of /api/v1/nodes carries it as `chain`, a row of /api/v1/sync/chains
// is one.
export function brokenFirst(items, chainOf = (item) => item) {
  const list = Array.isArray(items) ? items : [];
  return list
    .map((item, index) => ({ item, index, broken: chainState(chainOf(item)) === 'broken' }))
    .sort((a, b) => (a.broken === b.broken ? a.index - b.index : a.broken ? -1 : 1))
    .map((x) => x.item);
}

export function countBroken(items, chainOf = (item) => item) {
  return (Array.isArray(items) ? items : []).filter((item) => chainState(chainOf(item)) === 'broken').length;
}

// The alarm's text key: one node or several (English counts them; Chinese says the same either way).
export function alarmKey(n) {
  return n === 1 ? 'nodes.chains_alarm_one' : 'nodes.chains_alarm';
}

// Who a node is, for a chain row: the name this node enrolled it under (the row's own, else the
// nodes list's), else its short id. `nodes` maps node id → node of /api/v1/nodes.
export function nodeLabel(id, name, nodes) {
  const known = nodes && typeof nodes.get === 'function' ? nodes.get(id) : null;
  const label = (typeof name === 'string' && name) || (known && known.name) || null;
  return label ? { named: true, text: label, id } : { named: false, text: shortId(id), id };
}

// Which node delivered a chain's entries: { kind: 'direct' } when the node itself sent them,
// { kind: 'node', text, id, named } for a node between (named when it is enrolled here), and
// { kind: 'unknown' } when the node does not say.
export function viaLabel(chain, nodes) {
  const via = chain && chain.via;
  if (typeof via !== 'string' || !via) return { kind: 'unknown' };
  if (via === chain.origin) return { kind: 'direct' };
  return { kind: 'node', ...nodeLabel(via, null, nodes) };
}
