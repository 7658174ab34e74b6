// What the browser tests share about the node itself: starting the real binary on a port it picks
// (its log line says which), and a signed-in API client for seeding data the way a script would.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';

// Starts `township-node serve` with `args` on 127.0.0.1 port 0; resolves with the child and its
// plain-HTTP base URL once the node logs where it listens.
export function serveNode(bin, args, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['serve', ...args, '--listen', '127.0.0.1:0'], { env });
    const timer = setTimeout(() => reject(new Error('node did not report its address')), 30000);
    let buffer = '';
    const onData = (chunk) => {
      buffer += chunk.toString();
      const match = /listening on (http:\/\/[0-9.:]+)/.exec(buffer);
      if (match) {
        clearTimeout(timer);
        resolve({ child, base: match[1] });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => reject(new Error(`node exited with ${code}: ${buffer}`)));
  });
}

// A signed-in API client on plain HTTP (no Origin header, so the node's same-origin check passes):
// `call(method, path, body)` asserts success and returns the JSON; `token` is the session cookie's
// value, for handing the same session to a browser.
export async function signedIn(base, username, password) {
  const r = await fetch(`${base}/api/v1/session`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  assert.equal(r.status, 200, `${username} signs in`);
  const cookie = r.headers.getSetCookie().map((c) => c.split(';')[0]).find((c) => c.startsWith('tn_session='));
  const { csrf_token: csrf } = await r.json();
  const call = async (method, path, body) => {
    const response = await fetch(`${base}${path}`, {
      method,
      headers: { cookie, 'x-csrf-token': csrf, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await response.text();
    assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  return { token: cookie.slice('tn_session='.length), call };
}
