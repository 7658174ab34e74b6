// New work for the signed-in person, on every page: the work summary's event stream
// (/api/v1/incidents/work/events), the count on the header's badge, and a notice when more comes in.
// One EventSource while the tab is visible (a locked phone keeps no connection and no radio busy);
// after an HTTP error (signed out, session ended) the browser stops retrying, so we try again later.
// Pages hear each summary through onSummary (the landing page refreshes its lists on it).
import { t } from './i18n.js';
import { el } from './dom.js';
import { badgeCount, newWork, newWorkKey } from './work-logic.js';

const RETRY_MS = 30e3;
// Long enough to read two short phrases and reach the link, short enough not to cover the page for good.
const TOAST_MS = 8000;

let username = null;
let source = null;
let retry = null;
// The last summary heard for this person; kept while the tab is hidden, so what came in meanwhile is
// told on return.
let last = null;
let toastTimer = null;
const listeners = new Set();

export function latest() {
  return last;
}

export function onSummary(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function badge() {
  const link = document.getElementById('work-count');
  if (!link) return;
  const n = badgeCount(last);
  link.hidden = n === 0;
  // Only once a summary has come: "no count yet" and "nothing waiting" are not the same.
  if (last) link.dataset.count = String(n);
  else delete link.dataset.count;
  link.setAttribute('aria-label', t('work.badge_label', { n }));
  link.replaceChildren(t('work.badge'), ' ', el('span', { class: 'work-count-n' }, String(n)));
}

function hideToast() {
  clearTimeout(toastTimer);
  toastTimer = null;
  document.getElementById('work-toast')?.replaceChildren();
}

function showToast(parts) {
  const region = document.getElementById('work-toast');
  if (!region) return;
  clearTimeout(toastTimer);
  const text = parts.map((p) => t(newWorkKey(p), { n: p.n })).join(t('work.toast_sep'));
  const open = el('a', { href: '/', 'data-link': true, class: 'toast-link' }, t('work.toast_open'));
  open.addEventListener('click', hideToast);
  const close = el('button', { type: 'button', class: 'toast-close', 'aria-label': t('work.toast_close'), title: t('work.toast_close') },
    el('span', { 'aria-hidden': 'true' }, '×'));
  close.addEventListener('click', hideToast);
  region.replaceChildren(el('div', { class: 'toast', id: 'work-toast-box' }, el('p', { class: 'toast-text' }, text), open, close));
  toastTimer = setTimeout(hideToast, TOAST_MS);
}

function receive(summary) {
  if (!summary || !Array.isArray(summary.items)) return;
  const before = last;
  last = summary;
  badge();
  const parts = newWork(before, summary);
  if (parts.length) showToast(parts);
  for (const fn of listeners) {
    try { fn(summary, before); } catch (_) { /* one page's trouble must not stop the badge */ }
  }
}

function disconnect() {
  clearTimeout(retry);
  retry = null;
  if (source) source.close();
  source = null;
}

function connect() {
  if (source || !username || document.hidden) return;
  source = new EventSource('/api/v1/incidents/work/events');
  source.addEventListener('work', (e) => {
    let summary = null;
    try { summary = JSON.parse(e.data); } catch (_) { return; }
    receive(summary);
  });
  source.addEventListener('error', () => {
    // A dropped connection is retried by the browser; a refused one is closed for good.
    if (source && source.readyState === EventSource.CLOSED) {
      source = null;
      clearTimeout(retry);
      retry = setTimeout(() => { retry = null; connect(); }, RETRY_MS);
    }
  });
}

// Follows the person signed in now, or nobody (signed out): another person starts from nothing, so
// the last one's counts are never told as someone else's news.
export function follow(user) {
  const next = user ? user.username : null;
  if (next === username && (source || retry || !next)) return;
  disconnect();
  if (next !== username) {
    last = null;
    hideToast();
  }
  username = next;
  badge();
  connect();
}

// After a language switch.
export function retranslate() {
  badge();
}

document.addEventListener('visibilitychange', () => {
  if (document.hidden) disconnect();
  else connect();
});
