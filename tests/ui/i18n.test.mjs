// Keeps the two UI dictionaries in step: a key only one language has shows the other language (or the
// bare key) on screen, and nobody notices until a user does. Run with `node --test tests/ui/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');

// ui/ has no package.json saying its .js files are ES modules, and a Node that does not detect module
// syntax would load them as CommonJS; importing the text as a module works on any Node.
async function dictionary(name) {
  const source = readFileSync(join(UI, 'js', 'i18n', name), 'utf8');
  const module = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);
  return module.default;
}

// Merged as ui/js/i18n.js merges them: the refusal texts live in their own files.
const dictionaries = {
  'zh-CN': { ...await dictionary('zh-CN.js'), ...await dictionary('problems-zh-CN.js'), ...await dictionary('work-zh-CN.js') },
  en: { ...await dictionary('en.js'), ...await dictionary('problems-en.js'), ...await dictionary('work-en.js') },
};

function missing(from, to) {
  return Object.keys(dictionaries[from]).filter((key) => !Object.hasOwn(dictionaries[to], key));
}

test('both dictionaries have the same keys', () => {
  const problems = [];
  for (const [from, to] of [['zh-CN', 'en'], ['en', 'zh-CN']]) {
    const keys = missing(from, to);
    if (keys.length) problems.push(`${to} lacks ${keys.length} key(s) that ${from} has: ${keys.join(', ')}`);
  }
  assert.deepEqual(problems, [], problems.join('\n'));
});

test('no text is empty', () => {
  const empty = [];
  for (const [language, dict] of Object.entries(dictionaries)) {
    for (const [key, value] of Object.entries(dict)) {
      if (typeof value !== 'string' || value.trim() === '') empty.push(`${language}: ${key}`);
    }
  }
  assert.deepEqual(empty, [], `empty texts: ${empty.join(', ')}`);
});

// Keys written out in the source: t('…') calls, data-i18n attributes set from JS, and the shell's
// data-i18n attributes. Keys built at run time (t(`role.${r}`)) cannot be found this way and are
// skipped.
function usedKeys() {
  const uses = new Map();
  const note = (key, file) => {
    if (!uses.has(key)) uses.set(key, new Set());
    uses.get(key).add(relative(UI, file));
  };
  const jsDir = join(UI, 'js');
  const files = readdirSync(jsDir, { recursive: true })
    .filter((name) => name.endsWith('.js'))
    .map((name) => join(jsDir, name));
  for (const file of files) {
    const source = readFileSync(file, 'utf8');
    for (const m of source.matchAll(/\bt\(\s*(['"])([^'"`$]+?)\1\s*\)/g)) note(m[2], file);
    for (const m of source.matchAll(/'data-i18n':\s*(['"])([^'"`$]+?)\1/g)) note(m[2], file);
  }
  const shell = join(UI, 'index.html');
  for (const m of readFileSync(shell, 'utf8').matchAll(/data-i18n="([^"]+)"/g)) note(m[1], shell);
  return uses;
}

test('every key the UI names exists in both dictionaries', () => {
  const uses = usedKeys();
  assert.ok(uses.size > 100, `found only ${uses.size} keys in the source; is the pattern still right?`);
  const problems = [];
  for (const [key, files] of uses) {
    const lacking = Object.keys(dictionaries).filter((language) => !Object.hasOwn(dictionaries[language], key));
    if (lacking.length) problems.push(`${key} (used in ${[...files].join(', ')}) is missing from ${lacking.join(' and ')}`);
  }
  assert.deepEqual(problems, [], problems.join('\n'));
});

// A {placeholder} only one language has shows as a literal brace, or loses the value, in the other.
test('both languages fill in the same {placeholders}', () => {
  const names = (text) => [...String(text).matchAll(/\{([a-z_]+)\}/g)].map((m) => m[1]).sort();
  const differ = Object.keys(dictionaries['zh-CN'])
    .filter((key) => Object.hasOwn(dictionaries.en, key))
    .filter((key) => names(dictionaries['zh-CN'][key]).join() !== names(dictionaries.en[key]).join());
  assert.deepEqual(differ, [], `placeholders differ in: ${differ.join(', ')}`);
});

// The codes the node emits are listed in src/codes.rs; each needs a text in both languages (the Rust
// unit test checks the same from the other side).
test('every problem code in src/codes.rs has a text in both languages', () => {
  const source = readFileSync(join(UI, '..', 'src', 'codes.rs'), 'utf8');
  const codes = [...source.matchAll(/^\s+[A-Z][A-Za-z]+ = "([a-z_]+)",$/gm)].map((m) => m[1]);
  assert.ok(codes.length > 40, `found only ${codes.length} codes; is the pattern still right?`);
  const lacking = [];
  for (const code of codes) {
    for (const language of Object.keys(dictionaries)) {
      if (!Object.hasOwn(dictionaries[language], `problem.${code}`)) lacking.push(`${language}: ${code}`);
    }
  }
  assert.deepEqual(lacking, [], lacking.join('\n'));
});
