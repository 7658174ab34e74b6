// Translations: zh-CN first, English second. Keys are stable; missing English falls back to Chinese.
// The texts live in i18n/, one file per language, so a translator edits one language at a time.
import zhCN from './i18n/zh-CN.js';
import en from './i18n/en.js';
import problemsZhCN from './i18n/problems-zh-CN.js';
import problemsEn from './i18n/problems-en.js';
import workZhCN from './i18n/work-zh-CN.js';
import workEn from './i18n/work-en.js';

// Refusal texts live apart (one per problem code the node can send, kept in step with src/codes.rs),
// as do the work pages' texts.
const dictionaries = {
  'zh-CN': { ...zhCN, ...problemsZhCN, ...workZhCN },
  en: { ...en, ...problemsEn, ...workEn },
};

const STORAGE_KEY = 'township.lang';
let current = pickInitial();

function pickInitial() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved && dictionaries[saved]) return saved;
  } catch (_) { /* storage may be disabled; Chinese is the default */ }
  return 'zh-CN';
}

export function lang() {
  return current;
}

// The text for `key`; `{name}` in it is replaced by params.name when params are given.
export function t(key, params) {
  const text = dictionaries[current][key] ?? dictionaries['zh-CN'][key] ?? key;
  if (!params) return text;
  return text.replace(/\{([a-z_]+)\}/g, (whole, name) => (params[name] === undefined || params[name] === null ? whole : String(params[name])));
}

// Whether `key` has a text (in this language or the Chinese fallback).
export function has(key) {
  return key in dictionaries[current] || key in dictionaries['zh-CN'];
}

function setLang(next) {
  if (!dictionaries[next]) return;
  current = next;
  try { localStorage.setItem(STORAGE_KEY, next); } catch (_) { /* not fatal */ }
  applyTranslations(document);
}

export function toggleLang() {
  setLang(current === 'zh-CN' ? 'en' : 'zh-CN');
}

// Fills every element that carries data-i18n with the text for the current language, and every
// data-i18n-label with its aria-label.
export function applyTranslations(root) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll('[data-i18n]')) {
    el.textContent = t(el.dataset.i18n);
  }
  // Names that are not text on screen (a landmark's aria-label).
  for (const el of root.querySelectorAll('[data-i18n-label]')) {
    el.setAttribute('aria-label', t(el.dataset.i18nLabel));
  }
  const toggle = document.getElementById('lang-toggle');
  if (toggle) {
    toggle.textContent = t('lang.switch');
    toggle.lang = current === 'zh-CN' ? 'en' : 'zh-CN';
  }
}
