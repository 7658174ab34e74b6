// Serves the UI from ui/ on disk instead of the copy embedded in the binary, for working on the UI
// without rebuilding (E2E_UI_FROM_DISK=1): the shell comes from disk with the binary's UI version
// filled in (its response headers, the Content-Security-Policy among them, as the node sent them), and
// the files under /assets/{version}/ from disk. Use it with service workers blocked, or the worker's
// precache would serve the binary's copies.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

export const FROM_DISK = process.env.E2E_UI_FROM_DISK === '1';
const UI_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'ui');

const TYPES = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml; charset=utf-8',
  '.png': 'image/png',
  '.json': 'application/json; charset=utf-8',
  '.webmanifest': 'application/manifest+json; charset=utf-8',
};

function file(name) {
  const path = normalize(join(UI_DIR, name));
  if (!path.startsWith(UI_DIR + '/') || !existsSync(path) || !statSync(path).isFile()) return null;
  return path;
}

// Routes `context`'s requests to the node at `base` (http://127.0.0.1:port).
export async function serveUiFromDisk(context, base) {
  const origin = new URL(base).origin;
  await context.route((url) => url.origin === origin && url.pathname.startsWith('/assets/'), async (route) => {
    const name = new URL(route.request().url()).pathname.split('/').slice(3).join('/');
    const path = file(name);
    if (!path) return route.fulfill({ status: 404, body: 'not on disk' });
    return route.fulfill({
      status: 200,
      headers: { 'content-type': TYPES[extname(path)] || 'application/octet-stream', 'cache-control': 'no-store' },
      body: readFileSync(path),
    });
  });
  await context.route((url) => url.origin === origin && !url.pathname.startsWith('/api/') && !url.pathname.startsWith('/assets/'),
    async (route) => {
      if (route.request().resourceType() !== 'document') return route.fallback();
      const response = await route.fetch();
      const shell = await response.text();
      const version = /<meta name="ui-version" content="([^"]+)">/.exec(shell)?.[1];
      if (!version) return route.fulfill({ response, body: shell });
      const body = readFileSync(join(UI_DIR, 'index.html'), 'utf8').replaceAll('__UI_VERSION__', version);
      return route.fulfill({ response, body });
    });
}
