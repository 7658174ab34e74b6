// Refusals in the person's language: the node's code chooses the text, its params fill it in, and
// names (fields, actions, states, roles) read as words. Run with `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';

// i18n.js reads localStorage at load; Node has none, so Chinese (the default) applies.
const { problemText, problemCode } = await import('../../ui/js/problem.js');

test('a known code is shown with its params and the names in words', () => {
  const text = problemText(400, { code: 'text_length', params: { field: 'title', min: 1, max: 100 }, detail: 'title is 1 to 100 characters' });
  assert.equal(text, '“标题”应为 1 至 100 个字。');
  assert.equal(problemText(400, { code: 'note_required', params: { field: 'note', action: 'reject' } }), '“不予受理”需要填写原因或说明。');
  assert.equal(problemText(409, { code: 'action_not_allowed', params: { action: 'accept', state: 'closed' } }), '当前状态为“已结案”，不能“受理”。请刷新查看最新状态。');
});

test('without a known code the status decides, and English never leaks', () => {
  assert.equal(problemCode(403, { detail: 'missing or wrong X-CSRF-Token' }), 'forbidden');
  assert.equal(problemCode(404, { code: 'no_such_code_yet' }), 'not_found');
  assert.equal(problemCode(502, null), 'internal');
  assert.equal(problemCode(418, 'garbage'), 'error');
  assert.doesNotMatch(problemText(401, { detail: 'authentication required' }), /authentication/);
});

test('a parameter that is missing leaves its placeholder rather than "undefined"', () => {
  assert.doesNotMatch(problemText(429, { code: 'too_many_attempts' }), /undefined/);
});
