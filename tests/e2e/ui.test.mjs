// Browser end-to-end test of the UI shell in Debian's headless Chromium: the real binary serves it,
// the page renders in Chinese first, switches to English, navigates without reloads, and deep links
// work. Run by tests/run.sh; E2E_NODE_BIN names the binary.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.E2E_NODE_BIN;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
let dir;
let node;
let base;
let browser;

function startNode(dataDir) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ['serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], {
      env: { PATH: process.env.PATH, RUST_LOG: 'info' },
    });
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

before(async () => {
  assert.ok(BIN, 'set E2E_NODE_BIN to the township-node binary');
  dir = mkdtempSync(join(tmpdir(), 'township-e2e-'));
  execFileSync(BIN, ['init', '--data-dir', join(dir, 'node'), '--area', '330723001', '--name', '熟溪街道', '--role', 'township']);
  ({ child: node, base } = await startNode(join(dir, 'node')));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  node?.kill('SIGTERM');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('renders the overview in Chinese first with the node identity', async () => {
  const page = await browser.newPage({ viewport: { width: 360, height: 640 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  await page.goto(base + '/');
  await page.getByRole('heading', { name: '节点概览' }).waitFor();
  assert.equal(await page.locator('html').getAttribute('lang'), 'zh-CN');
  assert.equal(await page.locator('#node-name').textContent(), '熟溪街道');
  await page.getByText('330723001', { exact: true }).waitFor();
  await page.locator('.badge.ok').waitFor();
  assert.deepEqual(errors, [], 'no script errors or CSP violations');
  await page.screenshot({ path: join(process.env.E2E_ARTIFACTS || dir, 'overview-zh.png') });
  await page.close();
});

test('switches to English and remembers the choice', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base + '/');
  await page.getByRole('heading', { name: '节点概览' }).waitFor();
  await page.locator('#lang-toggle').click();
  await page.getByRole('heading', { name: 'Node overview' }).waitFor();
  assert.equal(await page.locator('html').getAttribute('lang'), 'en');
  assert.equal(await page.locator('#nav a[href="/incidents"]').textContent(), 'Incidents');
  await page.reload();
  await page.getByRole('heading', { name: 'Node overview' }).waitFor();
  await page.locator('#lang-toggle').click();
  await page.getByRole('heading', { name: '节点概览' }).waitFor();
  await context.close();
});

test('navigates without reloading and deep links load the shell', async () => {
  const page = await browser.newPage();
  await page.goto(base + '/');
  await page.getByRole('heading', { name: '节点概览' }).waitFor();
  await page.evaluate(() => { window.__marker = 'same-document'; });
  await page.locator('#nav a[href="/sensors"]').click();
  await page.getByRole('heading', { name: '监测站点' }).waitFor();
  assert.equal(new URL(page.url()).pathname, '/sensors');
  assert.equal(await page.evaluate(() => window.__marker), 'same-document', 'no full reload');
  assert.equal(await page.locator('#nav a[href="/sensors"]').getAttribute('aria-current'), 'page');
  await page.goBack();
  await page.getByRole('heading', { name: '节点概览' }).waitFor();

  await page.goto(base + '/incidents/some-id/deep');
  await page.getByRole('heading', { name: '页面不存在' }).waitFor();
  await page.goto(base + '/audit');
  await page.getByRole('heading', { name: '审计日志' }).waitFor();
  await page.close();
});
