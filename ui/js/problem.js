// A refusal from the node in the person's language. The node sends RFC 9457 problem documents with a
// stable `code` and its `params` (src/codes.rs); the English `detail` is for API readers. Names the
// params carry (a field, an action, a state, a role) are shown in words, never as identifiers.
import { t, has } from './i18n.js';

const STATUS_CODES = {
  400: 'bad_request', 401: 'unauthenticated', 403: 'forbidden', 404: 'not_found', 405: 'method_not_allowed',
  408: 'request_timeout', 409: 'conflict', 413: 'payload_too_large', 415: 'unsupported_media_type',
  421: 'misdirected', 422: 'unprocessable', 429: 'too_many_requests', 460: 'checksum_mismatch', 503: 'unavailable',
};

// The problem code of an answer: the node's own when it sent a known one, else the status's.
export function problemCode(status, problem) {
  const code = problem && typeof problem === 'object' && typeof problem.code === 'string' ? problem.code : null;
  if (code && has(`problem.${code}`)) return code;
  if (STATUS_CODES[status]) return STATUS_CODES[status];
  return status >= 500 ? 'internal' : 'error';
}

// A parameter's value as a person reads it: `prefix.value` when the dictionary has it.
function word(prefixes, value) {
  for (const prefix of prefixes) {
    if (has(`${prefix}.${value}`)) return t(`${prefix}.${value}`);
  }
  return value;
}

export function problemText(status, problem) {
  const code = problemCode(status, problem);
  const raw = problem && typeof problem === 'object' && problem.params && typeof problem.params === 'object' ? problem.params : {};
  const params = { ...raw };
  if (typeof params.field === 'string') params.field = word(['field'], params.field);
  if (typeof params.action === 'string') params.action = word(['action', 'waction', 'baction'], params.action);
  if (typeof params.state === 'string') params.state = word(['state', 'wstate', 'bstate'], params.state);
  if (typeof params.role === 'string') params.role = word(['role'], params.role);
  if (typeof params.after === 'string') params.after = word(['problem.time_order'], params.after);
  return t(`problem.${code}`, params);
}
