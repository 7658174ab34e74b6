// The incident pages' words for time: how late an overdue item is and how long a category's default
// deadline runs, in both languages (ui/js/format.js over incidents-logic.js). Run with
// `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';

// i18n.js reads localStorage at load (Node has none: Chinese), and switching language fills the page;
// a bare stand-in for the page lets the switch run here.
globalThis.document = { documentElement: {}, querySelectorAll: () => [], getElementById: () => null };
const { overdueText, durationText } = await import('../../ui/js/format.js');
const { toggleLang, lang } = await import('../../ui/js/i18n.js');

const HOUR = 3600000;
const due = Date.UTC(2026, 11, 1, 8, 0);

test('lateness and default deadlines read in Chinese, then in English', () => {
  assert.equal(lang(), 'zh-CN');
  assert.equal(overdueText(due, due + 3 * HOUR + 5 * 60000), '超期 3 小时');
  assert.equal(overdueText(due, due + 20 * 60000), '超期 20 分钟');
  assert.equal(overdueText(due, due + 80 * HOUR), '超期 3 天');
  assert.equal(overdueText(due, due - HOUR), null, 'not yet due');
  assert.equal(durationText(4320), '72 小时');
  assert.equal(durationText(10080), '7 天');
  toggleLang();
  try {
    assert.equal(lang(), 'en');
    assert.equal(overdueText(due, due + 3 * HOUR), '3 h overdue');
    assert.equal(durationText(4320), '72 h');
  } finally {
    toggleLang();
  }
});
