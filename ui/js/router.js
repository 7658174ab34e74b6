// History-API routing: the server answers every non-asset path with the app shell, so deep links work
// and the back button behaves. Pages are modules with `render(main, params)`.
const routes = [];

export function route(pattern, loader) {
  const names = [];
  const regex = new RegExp('^' + pattern.replace(/:([a-z_]+)/g, (_, n) => { names.push(n); return '([^/]+)'; }) + '/?$');
  routes.push({ regex, names, loader });
}

let notFound = null;
export function fallback(loader) {
  notFound = loader;
}

let onNavigate = () => {};
export function afterNavigate(fn) {
  onNavigate = fn;
}

// Pages that hold something beyond their DOM (a live EventSource, timers) register its release here;
// the next navigation, whatever starts it, runs and forgets these before the next page renders, so
// nothing keeps streaming into a page that is gone.
let leaving = [];
export function onLeave(fn) {
  leaving.push(fn);
}

function leave() {
  const fns = leaving;
  leaving = [];
  for (const fn of fns) {
    try { fn(); } catch (_) { /* one page's cleanup must not stop navigation */ }
  }
}

export async function navigate(path, { push = true, replace = false } = {}) {
  if (replace) history.replaceState({}, '', path);
  else if (push && path !== location.pathname + location.search) history.pushState({}, '', path);
  leave();
  const main = document.getElementById('main');
  for (const r of routes) {
    const m = r.regex.exec(location.pathname);
    if (m) {
      const params = Object.fromEntries(r.names.map((n, i) => [n, decodeURIComponent(m[i + 1])]));
      await r.loader(main, params);
      onNavigate(location.pathname);
      return;
    }
  }
  if (notFound) await notFound(main, {});
  onNavigate(location.pathname);
}

export function start() {
  document.addEventListener('click', (event) => {
    const link = event.target.closest('a[data-link]');
    if (!link || event.metaKey || event.ctrlKey || event.shiftKey || link.target) return;
    event.preventDefault();
    const url = new URL(link.href);
    navigate(url.pathname + url.search);
  });
  window.addEventListener('popstate', () => navigate(location.pathname, { push: false }));
  return navigate(location.pathname, { push: false });
}
