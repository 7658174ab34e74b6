// The signed-in user and what the node lets them do, shared by the header, the router guard and the
// pages.
import { getJson, postJson, del, setCsrf, ApiError } from './api.js';

let user = null;
// The routes the node's access table lets this user call, as "METHOD /path" templates. The node sends
// them with the user so the UI offers only what the node would allow, without its own copy of who
// may do what.
let allowed = new Set();
const listeners = new Set();

export function currentUser() {
  return user;
}

export function onChange(fn) {
  listeners.add(fn);
}

function set(next, routes = []) {
  user = next;
  allowed = new Set(next ? routes : []);
  for (const fn of listeners) fn(user);
}

// Asks the node who we are; a 401 just means nobody is signed in.
export async function refresh() {
  try {
    const data = await getJson('/api/v1/session', { timeoutMs: 8000 });
    setCsrf(data.csrf_token);
    set(data.user, data.can);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    setCsrf(null);
    set(null);
  }
  return user;
}

export async function signIn(username, password) {
  const data = await postJson('/api/v1/session', { username, password });
  setCsrf(data.csrf_token);
  set(data.user, data.can);
  return user;
}

export async function signOut() {
  try {
    await del('/api/v1/session');
  } finally {
    setCsrf(null);
    set(null);
  }
}

// Whether the access table lets this user call the route, e.g. can('POST', '/api/v1/incidents'); the
// path is the template as the table spells it ('/api/v1/nodes/{id}'), not a filled-in one. The node
// still checks the area and the workflow per record, so this decides what to offer, not what works.
export function can(method, path) {
  return user !== null && allowed.has(`${method} ${path}`);
}
