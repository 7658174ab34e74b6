// The signed-in user and what the node lets them do, shared by the header, the router guard and the
// pages.
//
// Offline the node cannot say who is signed in, yet a grid worker in a valley with no signal must
// still reach the report form and the outbox. So the last answer is remembered on the phone (user and
// routes, in localStorage) and used whenever the session endpoint cannot be reached; a real 401 from
// the node forgets it. The CSRF token is not remembered: it lives in memory only and is fetched again
// before anything is sent (outbox.js), so no copy of it sits on the phone's disk, and a stale one
// can never be sent.
import { getJson, postJson, del, setCsrf, getCsrf, ApiError } from './api.js';

const REMEMBER_KEY = 'township.session';

let user = null;
// The routes the node's access table lets this user call, as "METHOD /path" templates. The node sends
// them with the user so the UI offers only what the node would allow, without its own copy of who
// may do what.
let allowed = new Set();
// True while the user shown is the remembered one, not one the node just confirmed.
let fromMemory = false;
const listeners = new Set();

export function currentUser() {
  return user;
}

// Whether the node has confirmed this session since the page loaded.
export function confirmed() {
  return user !== null && !fromMemory;
}

export function onChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function remember(next, routes) {
  try {
    localStorage.setItem(REMEMBER_KEY, JSON.stringify({ user: next, can: routes, savedMs: Date.now() }));
  } catch (_) { /* storage full or disabled: offline sign-in state is lost, nothing else */ }
}

function forget() {
  try { localStorage.removeItem(REMEMBER_KEY); } catch (_) { /* as above */ }
}

function remembered() {
  try {
    const saved = JSON.parse(localStorage.getItem(REMEMBER_KEY) || 'null');
    if (saved && saved.user && typeof saved.user.username === 'string' && Array.isArray(saved.can)) return saved;
  } catch (_) { /* unreadable: as if nothing were saved */ }
  return null;
}

// The username the phone last knew, signed in or not (for clearing one person's offline data when
// another signs in on the same phone).
export function lastUsername() {
  return remembered()?.user.username || null;
}

function set(next, routes = []) {
  const changed = JSON.stringify(next) !== JSON.stringify(user) || JSON.stringify([...allowed].sort()) !== JSON.stringify([...(next ? routes : [])].sort());
  user = next;
  allowed = new Set(next ? routes : []);
  if (!changed) return;
  for (const fn of listeners) {
    try { fn(user); } catch (_) { /* one listener must not stop the others */ }
  }
}

function useRemembered(fallback) {
  const saved = remembered() || fallback;
  if (!saved) return false;
  // The token in memory is kept only if it belongs to the same person.
  if (user && user.username !== saved.user.username) setCsrf(null);
  fromMemory = true;
  set(saved.user, saved.can);
  return true;
}

// Asks the node who we are; a 401 just means nobody is signed in. Without an answer from the node,
// the remembered user stands in; with neither, the error is passed on.
export async function refresh() {
  try {
    const data = await getJson('/api/v1/session', { timeoutMs: 8000 });
    if (data.offlineAt) {
      // The service worker's copy: the node was not reached.
      useRemembered(data.user ? { user: data.user, can: data.can || [] } : null);
      return user;
    }
    setCsrf(data.csrf_token);
    fromMemory = false;
    remember(data.user, data.can);
    set(data.user, data.can);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      setCsrf(null);
      fromMemory = false;
      forget();
      set(null);
    } else if (!useRemembered(null)) {
      throw error;
    }
  }
  return user;
}

// The node answered 401 to something sent: the session ended (idle timeout). Whatever was being sent
// waits in the outbox; the header asks for a sign-in.
export function expired() {
  setCsrf(null);
  fromMemory = false;
  forget();
  set(null);
}

// A token for sending, fetched if this page has none yet. Null when the node cannot be reached or
// nobody is signed in.
export async function ensureCsrf() {
  if (getCsrf()) return getCsrf();
  await refresh();
  return getCsrf();
}

export async function signIn(username, password) {
  const data = await postJson('/api/v1/session', { username, password });
  setCsrf(data.csrf_token);
  fromMemory = false;
  remember(data.user, data.can);
  set(data.user, data.can);
  return user;
}

export async function signOut() {
  try {
    await del('/api/v1/session');
  } finally {
    setCsrf(null);
    fromMemory = false;
    forget();
    set(null);
  }
}

// Whether the access table lets this user call the route, e.g. can('POST', '/api/v1/incidents'); the
// path is the template as the table spells it ('/api/v1/nodes/{id}'), not a filled-in one. The node
// still checks the area and the workflow per record, so this decides what to offer, not what works.
export function can(method, path) {
  return user !== null && allowed.has(`${method} ${path}`);
}
