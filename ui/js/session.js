// The signed-in user, shared by the header, the router guard and the pages.
import { getJson, postJson, del, setCsrf, ApiError } from './api.js';

let user = null;
const listeners = new Set();

export function currentUser() {
  return user;
}

export function onChange(fn) {
  listeners.add(fn);
}

function set(next) {
  user = next;
  for (const fn of listeners) fn(user);
}

// Asks the node who we are; a 401 just means nobody is signed in.
export async function refresh() {
  try {
    const data = await getJson('/api/v1/session', { timeoutMs: 8000 });
    setCsrf(data.csrf_token);
    set(data.user);
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
  set(data.user);
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

export function hasRole(...roles) {
  return user !== null && roles.includes(user.role);
}
