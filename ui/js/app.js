// Entry point: language, navigation state, the header's node name and link state, then the router.
import { applyTranslations, toggleLang, t } from './i18n.js';
import { route, fallback, start, afterNavigate } from './router.js';
import { getJson } from './api.js';
import * as overview from './pages/overview.js';
import { pending, notFound } from './pages/pending.js';

route('/', (main) => overview.render(main));
for (const [path, key] of [
  ['/incidents', 'page.incidents'],
  ['/tasks', 'page.tasks'],
  ['/sensors', 'page.sensors'],
  ['/warnings', 'page.warnings'],
  ['/broadcast', 'page.broadcast'],
  ['/nodes', 'page.nodes'],
  ['/users', 'page.users'],
  ['/audit', 'page.audit'],
]) {
  route(path, pending(key));
}
fallback(notFound);

afterNavigate((path) => {
  for (const link of document.querySelectorAll('#nav a')) {
    const target = new URL(link.href).pathname;
    const active = target === '/' ? path === '/' : path === target || path.startsWith(target + '/');
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.getElementById('main').focus({ preventScroll: true });
});

async function header() {
  const state = document.getElementById('link-state');
  try {
    const node = await getJson('/api/v1/node', { timeoutMs: 8000 });
    document.getElementById('node-name').textContent = node.name;
    state.dataset.state = node.role === 'county' ? 'online' : 'unknown';
    state.dataset.i18n = node.role === 'county' ? 'link.local' : 'link.unknown';
    state.textContent = t(state.dataset.i18n);
  } catch (_) {
    state.dataset.state = 'offline';
    state.textContent = '⚠';
  }
}

document.getElementById('lang-toggle').addEventListener('click', () => {
  toggleLang();
  // Re-render the page so text built from data (not only data-i18n) follows the language.
  import('./router.js').then((r) => r.navigate(location.pathname, { push: false }));
});

applyTranslations(document);
header();
start();
