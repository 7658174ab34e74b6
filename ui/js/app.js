// Entry point: language, the signed-in user, the header, navigation by what the user may do, then the
// router. Also starts the outbox (outbox.js) and registers the service worker (sw.js) that keeps the
// app and the last-read data on the phone.
import { applyTranslations, toggleLang, t } from './i18n.js';
import { route, fallback, start, afterNavigate, navigate } from './router.js';
import { getJson } from './api.js';
import { el, errorBox } from './dom.js';
import { formatTime } from './format.js';
import { refresh, currentUser, onChange, signOut, can, lastUsername } from './session.js';
import * as outbox from './outbox.js';
import { isOffline, onNetChange } from './net.js';
import * as login from './pages/login.js';
// The warning banner is on every page, so its module is always needed.
import * as warnings from './pages/warnings.js';
import { notFound } from './pages/pending.js';

// Every other page is fetched when it is first opened: the sign-in page on a 400 kbit/s link then
// waits only for what it shows. The service worker keeps every file of this version, so pages open
// offline all the same. A page that cannot be fetched says so, with a retry, instead of a blank.
const pageLoaders = [];
function page(load, name) {
  pageLoaders.push(load);
  let module = null;
  return async (main, params) => {
    try {
      module ??= await load();
    } catch (_) {
      main.replaceChildren(errorBox(t('common.unreachable'),
        () => navigate(location.pathname + location.search, { push: false })));
      return;
    }
    await module[name](main, params);
  };
}
const outboxPage = { render: page(() => import('./pages/outbox.js'), 'render') };
const overview = { render: page(() => import('./pages/overview.js'), 'render') };
const home = { render: page(() => import('./pages/home.js'), 'render') };
const users = { render: page(() => import('./pages/users.js'), 'render') };
const audit = { render: page(() => import('./pages/audit.js'), 'render') };
const incidents = {
  renderList: page(() => import('./pages/incidents.js'), 'renderList'),
  renderTasks: page(() => import('./pages/incidents.js'), 'renderTasks'),
};
const report = { render: page(() => import('./pages/report.js'), 'render') };
const incident = { render: page(() => import('./pages/incident.js'), 'render') };
const indicators = { render: page(() => import('./pages/indicators.js'), 'render') };
const nodes = { render: page(() => import('./pages/nodes.js'), 'render') };
const cockpit = { render: page(() => import('./pages/cockpit.js'), 'render') };
const sensorsList = { renderList: page(() => import('./pages/sensors-list.js'), 'renderList') };
const sensorsStation = { renderStation: page(() => import('./pages/sensors-station.js'), 'renderStation') };
const rules = { render: page(() => import('./pages/rules.js'), 'render') };
const broadcasts = {
  renderList: page(() => import('./pages/broadcasts.js'), 'renderList'),
  renderDetail: page(() => import('./pages/broadcasts.js'), 'renderDetail'),
};
import { followWarnings } from './warning-events.js';
import * as work from './work.js';

// Pages that need a signed-in user and, where given, the API route the page is built on: a user the
// node would refuse there gets "not found" rather than a page of errors.
function guarded(render, method, path) {
  return async (main, params) => {
    if (!currentUser()) {
      navigate(`/login?next=${encodeURIComponent(location.pathname)}`, { replace: true });
      return;
    }
    if (method && !can(method, path)) {
      await notFound(main);
      return;
    }
    await render(main, params);
  };
}

// People land on their work; the node's own identity and health moved to /node, open to anyone as
// the overview was.
route('/', guarded(home.render));
route('/node', (main) => overview.render(main));
route('/login', (main) => login.render(main));
route('/users', guarded(users.render, 'GET', '/api/v1/users'));
route('/audit', guarded(audit.render, 'GET', '/api/v1/audit'));
route('/incidents', guarded(incidents.renderList));
route('/incidents/new', guarded(report.render, 'POST', '/api/v1/incidents'));
route('/incidents/:id', guarded(incident.render));
route('/tasks', guarded(incidents.renderTasks));
route('/outbox', guarded(outboxPage.render));
route('/indicators', guarded(indicators.render));
route('/nodes', guarded(nodes.render, 'GET', '/api/v1/nodes'));
// The county overview is for those who see the whole tree's nodes; each of its sections still copes
// with a refusal of its own (a village admin signed in at the township).
route('/county', guarded(cockpit.render, 'GET', '/api/v1/nodes'));
// Every signed-in role sees sensors; the node shows each only the stations inside their area.
route('/sensors', guarded(sensorsList.renderList));
route('/sensors/:id', guarded(sensorsStation.renderStation));
// Everyone signed in sees the warnings covering their area; who may act is the node's decision.
route('/warnings', guarded(warnings.renderList));
route('/warnings/:id', guarded(warnings.renderDetail));
route('/rules', guarded(rules.render, 'GET', '/api/v1/rules'));
// Broadcasts: everyone signed in sees those covering their area; the page offers the order form
// and the actions only where the node's access table allows them.
route('/broadcasts', guarded(broadcasts.renderList, 'GET', '/api/v1/broadcasts'));
route('/broadcasts/:id', guarded(broadcasts.renderDetail, 'GET', '/api/v1/broadcasts/{id}'));
// The address the placeholder page had, for bookmarks made before.
route('/broadcast', () => navigate('/broadcasts', { replace: true }));
fallback(notFound);

// Live: the banner follows warning events; the slow poll only covers a stream that cannot connect.
const warningStream = followWarnings(() => {
  warnings.refreshBanner();
  window.dispatchEvent(new CustomEvent('township:warning'));
}, () => Boolean(currentUser()));
setInterval(() => warnings.refreshBanner(), 300000);

afterNavigate((path) => {
  warnings.refreshBanner();
  outboxHeader();
  let current = null;
  for (const link of document.querySelectorAll('#nav a')) {
    const target = new URL(link.href).pathname;
    const active = target === '/' ? path === '/' : path === target || path.startsWith(target + '/');
    if (active) {
      link.setAttribute('aria-current', 'page');
      current = link;
    } else link.removeAttribute('aria-current');
  }
  pageTitle(current);
  showInNav(current);
  document.getElementById('main').focus({ preventScroll: true });
});

// The window title names the page: its heading (an incident's or a station's own name on their
// pages), else the menu item it belongs to, then the app ("事件上报与处置 · 基层治理节点").
function pageTitle(navLink) {
  const heading = document.querySelector('#main h1');
  const name = heading?.textContent.trim() || navLink?.textContent.trim() || t('app.title');
  document.title = `${name} · ${t('app.window_title')}`;
}

// The menu scrolls sideways on a phone: a fade with an arrow marks the side where more items are
// (data-more, styled in app.css), and the current page's item is scrolled into view.
const nav = document.getElementById('nav');
function navCue() {
  const more = [];
  if (nav.scrollWidth > nav.clientWidth + 1) {
    if (nav.scrollLeft > 1) more.push('left');
    if (nav.scrollLeft + nav.clientWidth < nav.scrollWidth - 1) more.push('right');
  }
  nav.dataset.more = more.join(' ');
}
function showInNav(link) {
  if (link && nav.scrollWidth > nav.clientWidth + 1) {
    const box = nav.getBoundingClientRect();
    const r = link.getBoundingClientRect();
    // Beyond the fade (2.5rem) on either side.
    const margin = 40;
    if (r.left < box.left + margin) nav.scrollLeft -= box.left + margin - r.left;
    else if (r.right > box.right - margin) nav.scrollLeft += r.right - (box.right - margin);
  }
  navCue();
}
nav.addEventListener('scroll', navCue, { passive: true });
window.addEventListener('resize', navCue);

function renderUser(user) {
  const box = document.getElementById('user-box');
  box.replaceChildren();
  if (user) {
    const name = document.createElement('span');
    name.className = 'user-name';
    name.id = 'user-name';
    // On a phone the role gives way to the name (app.css); screen readers still read both.
    name.append(user.display_name, el('span', { class: 'user-role' }, ` · ${t(`role.${user.role}`)}`));
    const out = document.createElement('button');
    out.type = 'button';
    out.id = 'logout';
    out.className = 'header-button';
    out.dataset.i18n = 'login.logout';
    out.textContent = t('login.logout');
    out.addEventListener('click', async () => {
      await signOut().catch(() => {});
      clearOfflineData();
      navigate('/login');
    });
    box.append(name, out);
  } else {
    const link = document.createElement('a');
    link.href = '/login';
    link.dataset.link = '';
    link.dataset.i18n = 'login.title';
    link.className = 'header-link';
    link.textContent = t('login.title');
    box.append(link);
  }
  // Only offer what the node lets this user use; data-can is the route the page is built on.
  for (const a of document.querySelectorAll('#nav a[data-can]')) {
    const [method, path] = a.dataset.can.split(' ');
    a.hidden = !can(method, path);
  }
  for (const a of document.querySelectorAll('#nav a[data-signed-in]')) {
    a.hidden = !user;
  }
  navCue();
}

async function header() {
  try {
    const node = await getJson('/api/v1/node', { timeoutMs: 8000 });
    document.getElementById('node-name').textContent = node.name;
  } catch (_) {
    const state = document.getElementById('link-state');
    state.dataset.state = 'offline';
    state.textContent = '⚠';
  }
}

// The sync state in the header: connected, offline since when, changes waiting. Polled gently.
async function linkState() {
  const state = document.getElementById('link-state');
  if (!currentUser()) {
    state.textContent = '';
    return;
  }
  state.title = '';
  try {
    const s = await getJson('/api/v1/sync/status', { timeoutMs: 8000 });
    if (!s.upstream) {
      state.dataset.state = 'online';
      state.textContent = t('link.local');
    } else if (s.upstream.state === 'connected') {
      state.dataset.state = 'online';
      state.textContent = s.upstream.pending_out > 0 ? `${t('link.connected')} · ${s.upstream.pending_out}` : t('link.connected');
    } else if (s.upstream.state === 'refused') {
      // Only a person can fix a refusal (enrolment, key, version): say so, with the node's reason.
      state.dataset.state = 'offline';
      state.textContent = `⚠ ${t('link.refused')}`;
      state.title = s.upstream.last_error || '';
    } else {
      state.dataset.state = 'offline';
      const when = s.upstream.since_ms ? formatTime(s.upstream.since_ms, { date: false }) : '';
      state.textContent = `${t('link.offline_since')} ${when}`;
    }
  } catch (_) {
    state.dataset.state = 'offline';
    state.textContent = '⚠';
  }
}
setInterval(linkState, 15000);

// What the outbox needs from the person, in the header: how many items need attention (a link to
// the outbox), and a sign-in prompt when items wait for one. The prompt returns to this page.
function outboxHeader() {
  const badge = document.getElementById('outbox-count');
  const n = outbox.count();
  badge.hidden = n === 0;
  badge.textContent = `${t('outbox.badge')} ${n}`;
  badge.dataset.count = String(n);
  const prompt = document.getElementById('outbox-auth');
  prompt.hidden = !outbox.needsSignIn() || location.pathname === '/login';
  if (location.pathname !== '/login') {
    prompt.href = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
  }
}

function netHeader() {
  document.getElementById('net-state').hidden = !isOffline();
}

// The service worker's copies of this person's data, dropped on sign-out (a shared phone).
function clearOfflineData() {
  if ('serviceWorker' in navigator && navigator.serviceWorker.controller) {
    navigator.serviceWorker.controller.postMessage({ type: 'clear-api-data' });
  }
}

// Secure contexts only (HTTPS, or localhost), as browsers require; never in the way of the first
// paint, so it waits for the page to load.
function registerWorker() {
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return;
  const register = () => navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch(() => {});
  if (document.readyState === 'complete') register();
  else window.addEventListener('load', register, { once: true });
}

document.getElementById('lang-toggle').addEventListener('click', () => {
  toggleLang();
  renderUser(currentUser());
  outboxHeader();
  work.retranslate();
  // Re-render the page so text built from data (not only data-i18n) follows the language.
  navigate(location.pathname + location.search, { push: false });
});

// Someone else signing in on this phone does not get the last person's offline copies.
let knownUsername = lastUsername();
onChange((user) => {
  if (user && knownUsername && user.username !== knownUsername) clearOfflineData();
  if (user) knownUsername = user.username;
  renderUser(user);
  linkState();
  warningStream.reconnect();
  work.follow(user);
  outboxHeader();
});
outbox.onChange(outboxHeader);
onNetChange(netHeader);
applyTranslations(document);
netHeader();
header();
registerWorker();
refresh()
  .catch(() => null)
  .finally(() => {
    renderUser(currentUser());
    work.follow(currentUser());
    outbox.start();
    start().finally(warmPages);
  });

// Once the first page is up, the other pages are fetched in the background (one at a time, when the
// browser is idle), so a phone that loses the link before its service worker controls the page can
// still open every page it has not opened yet.
function warmPages() {
  const idle = window.requestIdleCallback || ((fn) => setTimeout(fn, 200));
  const next = (i) => {
    if (i >= pageLoaders.length) return;
    idle(() => pageLoaders[i]().catch(() => {}).finally(() => next(i + 1)));
  };
  next(0);
}
