#!/usr/bin/env node
// automerge-repo with a sync server (WebSocket, NodeFS storage), measured the way
// tests/bench/sync.py measures township-node: N incidents already at the "village" before the
// "county" is reached, bytes counted by a forwarding TCP proxy, cold-sync time from the first
// proxied connection until the county has all N stored, then the latency from a new incident at the
// connected village to it being readable at the county, p50/p99 over 60 edits.
//
// The county is set up as automerge-repo-sync-server sets itself up: NodeFSStorageAdapter, a
// WebSocketServerAdapter on a ws server, and sharePolicy false (it announces nothing, but accepts
// and stores every document a peer syncs to it). Its storage gives it a storageId, so the village
// keeps sync state for it, as a real client of a sync server does.
//
// Three processes, as with sync.py (village, county, and the proxy in the driver): one Node event
// loop for everything would make client, server and proxy take turns on one core.
//
// Usage: node automerge_repo.mjs   (INCIDENTS=n, default 10000). Human lines go to stderr; the last
// line on stdout is one JSON object for tests/bench/sync_peers.sh.
import { fork } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const SELF = fileURLToPath(import.meta.url);
const N = Number.parseInt(process.env.INCIDENTS ?? "10000", 10);
const EDITS = 60;
const COLD_LIMIT_MS = 600_000; // sync.py gives up after 10 minutes too
const EDIT_LIMIT_MS = 30_000;

// process.hrtime reads CLOCK_MONOTONIC, which is one clock for every process on the machine, so
// a time taken in the village process can be subtracted from one taken in the county process.
const now = () => Number(process.hrtime.bigint()) / 1e6;
const log = (...a) => console.error(...a);

// --- shared with pouchdb.mjs (kept in each file so each runs on its own) ---

function uuid7() {
  const b = crypto.randomBytes(16);
  b.writeUIntBE(Date.now(), 0, 6);
  b[6] = 0x70 | (b[6] & 0x0f);
  b[8] = 0x80 | (b[8] & 0x3f);
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// The same incident as pouchdb.mjs writes, so bytes per record compare; `idKey` is "id" here
// (automerge-repo names documents itself; the record keeps its own id as a field).
const REPORTER = uuid7();
function incident(n, idKey) {
  const ms = Date.now();
  return {
    [idKey]: uuid7(),
    kind: "incident",
    scope: "330723001001",
    category: "环境卫生",
    title: `河道垃圾堆积 ${n}`,
    description: `群众反映河道垃圾堆积，编号${n}，请尽快处理。`,
    area: "330723001001",
    location: { lat: 28.89, lon: 119.81 },
    reporter: REPORTER,
    created_ms: ms,
    severity: "normal",
    transitions: [{ action: "report", by: REPORTER, at: ms, state: "reported" }],
  };
}

// Same rule as sync.py: statistics.median, and the 99th as sorted[int(len * 0.99)].
function p50(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
function p99(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))];
}

/** Forwards TCP to a target port and counts the bytes each way, like sync.py's CountingProxy. */
class CountingProxy {
  constructor(target) {
    this.target = target;
    this.up = 0;
    this.down = 0;
    this.connections = 0;
    // When the first connection reached the target: what came before is the client's own start-up.
    this.firstConnected = null;
    this.sockets = new Set();
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.target, "127.0.0.1");
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      upstream.on("connect", () => {
        this.connections++;
        this.firstConnected ??= now();
      });
      client.on("data", (d) => {
        this.up += d.length;
      });
      upstream.on("data", (d) => {
        this.down += d.length;
      });
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }
  listen() {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(0, "127.0.0.1", () => resolve(this.server.address().port));
    });
  }
  close() {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** The driver's side of a child process: call(op, args) -> the child's answer, or its error. */
class Child {
  constructor(role, dir) {
    this.name = role;
    this.seq = 0;
    this.pending = new Map();
    this.warnings = new Map();
    // The child's stdout goes to our stderr: our stdout carries only the JSON line.
    this.proc = fork(SELF, [role, dir], { stdio: ["ignore", 2, 2, "ipc"] });
    this.exited = new Promise((resolve) => this.proc.once("exit", resolve));
    this.ready = new Promise((resolve, reject) => {
      this.proc.on("message", (m) => m.ready && resolve());
      this.proc.once("exit", (code, signal) => reject(new Error(`${role} exited (${signal ?? code}) while starting`)));
    });
    this.ready.catch(() => {}); // call() reports it
    this.proc.on("message", (m) => {
      if (m.ready) return;
      if (m.warn) {
        this.warnings.set(m.warn, (this.warnings.get(m.warn) ?? 0) + 1);
        return;
      }
      const p = this.pending.get(m.seq);
      if (!p) return;
      this.pending.delete(m.seq);
      m.ok ? p.resolve(m.result) : p.reject(new Error(`${this.name}: ${m.error}`));
    });
    this.proc.on("exit", (code, signal) => {
      for (const p of this.pending.values()) p.reject(new Error(`${this.name} exited (${signal ?? code})`));
      this.pending.clear();
    });
  }
  async call(op, args = {}) {
    await this.ready;
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.proc.send({ seq, op, ...args });
    });
  }
  async stop() {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    try {
      await Promise.race([this.call("close"), new Promise((r) => setTimeout(r, 10_000).unref())]);
    } catch {
      // it may have exited already; the kill below covers a hung one
    }
    const t = setTimeout(() => this.proc.kill("SIGKILL"), 5_000);
    if (this.proc.connected) this.proc.disconnect();
    await this.exited;
    clearTimeout(t);
  }
}

/** The child's side: reports what it would have died of, so the driver can count it in the notes. */
function childWarnings() {
  const warn = (w) => process.connected && process.send({ warn: String(w).slice(0, 160) });
  process.on("unhandledRejection", (e) => warn(`unhandled rejection: ${e?.message ?? e}`));
  process.on("uncaughtException", (e) => warn(`uncaught exception: ${e?.message ?? e}`));
  return warn;
}

/** The child's side: answers the driver's calls with `handlers`, then tells it so. */
function serve(handlers) {
  process.on("disconnect", () => process.exit(0)); // the driver is gone: nothing left to answer
  process.on("message", async (m) => {
    try {
      const result = await handlers[m.op](m);
      process.send({ seq: m.seq, ok: true, result });
    } catch (e) {
      process.send({ seq: m.seq, ok: false, error: e?.stack ?? String(e) });
    }
  });
  // A message sent before the child listens is dropped, so the driver waits for this.
  process.send({ ready: true });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// automerge-repo reports a document that timed out (60 s by default) or a sync message it could not
// apply with console.log, then carries on or rejects a promise nobody awaits. Count them by kind
// for the notes instead of flooding the log: one left unhandled has ended a 10,000-document cold sync.
function countLibraryErrors(warn) {
  const shown = new Map();
  const original = console.log;
  console.log = (...args) => {
    const first = typeof args[0] === "string" ? args[0] : "";
    if (!first.startsWith("error")) return original(...args);
    const kind = first.replace(/[1-9A-HJ-NP-Za-km-z]{20,}/g, "<doc>").slice(0, 100);
    warn(kind);
    const n = (shown.get(kind) ?? 0) + 1;
    shown.set(kind, n);
    if (n <= 3) console.error(first, args[1]?.err?.message ?? "");
  };
}

async function libraries() {
  const { Repo } = await import("@automerge/automerge-repo");
  const ws = await import("@automerge/automerge-repo-network-websocket");
  const { NodeFSStorageAdapter } = await import("@automerge/automerge-repo-storage-nodefs");
  // 2.x names the adapters WebSocketClientAdapter/WebSocketServerAdapter and keeps the 1.x names
  // (BrowserWebSocketClientAdapter/NodeWSServerAdapter) as hidden aliases; take whichever exists.
  const Client = ws.WebSocketClientAdapter ?? ws.BrowserWebSocketClientAdapter;
  const Server = ws.WebSocketServerAdapter ?? ws.NodeWSServerAdapter;
  return { Repo, Client, Server, NodeFSStorageAdapter };
}

// --- the county: a sync server ---

async function county(dir) {
  const { Repo, Server, NodeFSStorageAdapter } = await libraries();
  const { WebSocketServer } = await import("ws");
  countLibraryErrors(childWarnings());

  // "Stored" is when the file holding the document's changes has been written: the adapter's
  // save resolves after fs.writeFile (it does not fsync). Sync-state and storage-id files don't count.
  const stored = new Map();
  let target = Infinity;
  let reachedAt = null;
  class TrackedStorage extends NodeFSStorageAdapter {
    async save(key, binary) {
      await super.save(key, binary);
      if ((key[1] === "incremental" || key[1] === "snapshot") && !stored.has(key[0])) {
        stored.set(key[0], now());
        if (stored.size >= target && reachedAt === null) reachedAt = now();
      }
    }
  }

  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((resolve, reject) => wss.once("listening", resolve).once("error", reject));
  let repo = new Repo({
    network: [new Server(wss)],
    storage: new TrackedStorage(dir),
    peerId: "county-sync-server",
    sharePolicy: async () => false,
  });

  serve({
    start: async () => wss.address().port,
    async waitStored({ n, limitMs }) {
      target = n;
      if (stored.size >= n && reachedAt === null) reachedAt = now();
      const until = now() + limitMs;
      while (reachedAt === null && now() < until) await sleep(10);
      return { at: reachedAt, count: stored.size };
    },
    // Readable: the county's handle for it is ready and shows the title. Stored: as above.
    async waitLive({ id, title, limitMs }) {
      const until = now() + limitMs;
      let visible = null;
      for (;;) {
        const h = repo.handles[id];
        if (visible === null && h?.isReady() && h.doc()?.title === title) visible = now();
        if (visible !== null && stored.has(id)) return { visible, stored: stored.get(id) };
        if (now() > until) {
          throw new Error(`${id} not ${visible === null ? "readable" : "stored"} at the county after ${limitMs} ms`);
        }
        await sleep(2);
      }
    },
    // Reopens the county's directory in a fresh Repo with no network, so what is counted is what
    // is on disk, not what the running server holds in memory.
    async verify({ ids, titles }) {
      await repo.shutdown();
      repo = null;
      wss.close();
      const fresh = new Repo({ storage: new NodeFSStorageAdapter(dir), network: [] });
      let matching = 0;
      const missing = [];
      for (let i = 0; i < ids.length; i += 200) {
        await Promise.all(ids.slice(i, i + 200).map(async (id, k) => {
          try {
            const h = await fresh.find(id);
            if (h.doc()?.title === titles[i + k]) matching++;
            else missing.push(id);
          } catch {
            missing.push(id);
          }
        }));
      }
      await fresh.shutdown();
      return { matching, missing: missing.slice(0, 3) };
    },
    async close() {
      if (repo) await repo.shutdown();
      wss.close();
    },
  });
}

// --- the village: a Repo with NodeFS storage that connects to the county over WebSocket ---

async function village(dir) {
  const { Repo, Client, NodeFSStorageAdapter } = await libraries();
  countLibraryErrors(childWarnings());
  // No network yet: the adapter is added once the records exist (see connect).
  const repo = new Repo({ storage: new NodeFSStorageAdapter(dir), network: [], peerId: `village-${uuid7()}` });

  serve({
    // The handles stay loaded: a Repo offers a new peer only the documents it has in memory,
    // so a village that restarted would have to find() every document before it synced them.
    async fill({ n }) {
      const ids = [];
      const titles = [];
      for (let k = 1; k <= n; k++) {
        const doc = incident(k, "id");
        ids.push(repo.create(doc).documentId);
        titles.push(doc.title);
        if (k % 500 === 0) await repo.flush();
      }
      await repo.flush();
      return { ids, titles };
    },
    // Adding the adapter to the running Repo is what constructing it with one does; the socket
    // opens at once, so the proxy's first connection marks the start as in sync.py.
    async connect({ url }) {
      repo.networkSubsystem.addNetworkAdapter(new Client(url));
      return now();
    },
    async edit({ n }) {
      const doc = incident(n, "id");
      const id = repo.create(doc).documentId;
      return { id, title: doc.title, at: now() };
    },
    async close() {
      await repo.shutdown();
    },
  });
}

// --- the driver ---

async function main() {
  if (!(N > 0)) throw new Error(`INCIDENTS must be a positive integer, got ${process.env.INCIDENTS}`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "sync-peers-automerge-"));
  const children = [];
  let proxy;
  const cleanup = async () => {
    // The village first, so it does not keep reconnecting to a county that is gone.
    for (const c of [...children].reverse()) await c.stop().catch(() => {});
    await proxy?.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  };
  process.once("SIGINT", () => cleanup().finally(() => process.exit(130)));
  process.once("SIGTERM", () => cleanup().finally(() => process.exit(143)));
  const warnings = () =>
    children.flatMap((c) => [...c.warnings].map(([w, n]) => `${c.name}: ${n}x ${w}`));
  let result;
  let exitCode = 0;
  try {
    fs.mkdirSync(path.join(tmp, "county"));
    fs.mkdirSync(path.join(tmp, "village"));
    const server = new Child("county", path.join(tmp, "county"));
    children.push(server);
    const port = await server.call("start");
    proxy = new CountingProxy(port);
    const url = `ws://127.0.0.1:${await proxy.listen()}`;

    const client = new Child("village", path.join(tmp, "village"));
    children.push(client);
    const t = now();
    const filled = await client.call("fill", { n: N });
    log(`village holds ${N.toLocaleString()} incidents (created and flushed in ${((now() - t) / 1000).toFixed(1)} s)`);

    const waited = server.call("waitStored", { n: N, limitMs: COLD_LIMIT_MS });
    waited.catch(() => {}); // awaited below; this only stops an early failure counting as unhandled
    const connected = await client.call("connect", { url });
    const cold = await waited;
    const { up, down, connections } = proxy;
    const bytes = up + down;
    const notes = [
      "automerge-repo 2.5 (automerge 3) village Repo with NodeFSStorageAdapter, handles loaded, " +
        "WebSocketClientAdapter through the proxy; county set up as automerge-repo-sync-server " +
        "(NodeFSStorageAdapter, WebSocketServerAdapter, sharePolicy false, storageId), ws without permessage-deflate",
      "no fsync: NodeFSStorageAdapter writes with fs.writeFile and never fsyncs (village and county alike); " +
        "saves are also throttled to one per document per 100 ms (saveDebounceRate)",
      "one Automerge document per incident; strings are Automerge's default collaborative text",
    ];
    if (cold.at === null) {
      // Reported, not thrown: how far it got and what it logged is the finding.
      exitCode = 2;
      result = {
        stack: "automerge-repo",
        records: N,
        seconds: null,
        records_per_s: null,
        bytes,
        bytes_per_record: Math.round(bytes / N),
        live_p50_ms: null,
        live_p99_ms: null,
        notes: [
          `cold sync did not finish in ${COLD_LIMIT_MS / 1000} s: the county stored ${cold.count} of ${N}`,
          ...notes,
          ...warnings(),
        ].join("; "),
      };
      log(result.notes);
      return;
    }
    const first = proxy.firstConnected ?? connected;
    const seconds = (cold.at - first) / 1000;
    log(`cold sync of ${N.toLocaleString()} incidents village -> county on loopback: ${seconds.toFixed(2)} s ` +
        `(${Math.round(N / seconds).toLocaleString()} records/s) from the first connection, ` +
        `${(bytes / 1e6).toFixed(2)} MB on the wire (${(up / 1e6).toFixed(2)} up, ${(down / 1e6).toFixed(2)} down), ` +
        `${Math.round(bytes / N).toLocaleString()} bytes per record`);

    // Sync goes on after the last document is stored (the county's replies, the village saving sync
    // state): wait until the wire has been quiet for 500 ms so the first edits don't queue behind it.
    let last = -1;
    const settleUntil = now() + 60_000;
    while (proxy.up + proxy.down !== last && now() < settleUntil) {
      last = proxy.up + proxy.down;
      await sleep(500);
    }
    const settled = proxy.up + proxy.down;
    log(`the wire went quiet after ${((settled) / 1e6).toFixed(2)} MB in all`);

    const latencies = [];
    const storedLatencies = [];
    for (let i = 0; i < EDITS; i++) {
      const e = await client.call("edit", { n: N + 1 + i });
      const seen = await server.call("waitLive", { id: e.id, title: e.title, limitMs: EDIT_LIMIT_MS });
      latencies.push(seen.visible - e.at);
      storedLatencies.push(seen.stored - e.at);
    }
    const liveBytes = proxy.up + proxy.down - settled;
    const l50 = p50(latencies);
    const l99 = p99(latencies);
    log(`edit at a connected village to readable at the county: p50 ${l50.toFixed(1)} ms, p99 ${l99.toFixed(1)} ms ` +
        `over ${EDITS} edits (stored: p50 ${p50(storedLatencies).toFixed(1)} ms, p99 ${p99(storedLatencies).toFixed(1)} ms), ` +
        `${Math.round(liveBytes / EDITS).toLocaleString()} bytes per edit on the wire`);

    // What the county has on disk, read back by a fresh Repo once the village has gone.
    await client.stop();
    const v = await server.call("verify", {
      ids: filled.ids,
      titles: filled.titles,
    });
    if (v.matching !== N) throw new Error(`the county's disk holds ${v.matching} of the ${N} incidents (missing e.g. ${v.missing})`);

    result = {
      stack: "automerge-repo",
      records: N,
      seconds: +seconds.toFixed(3),
      records_per_s: Math.round(N / seconds),
      bytes,
      bytes_per_record: Math.round(bytes / N),
      live_p50_ms: +l50.toFixed(1),
      live_p99_ms: +l99.toFixed(1),
      notes: [
        ...notes,
        `cold end = the county's last document written to disk; ${settled} bytes in all once the wire went quiet`,
        `bytes ${up} up, ${down} down over ${connections} connection(s); live ${Math.round(liveBytes / EDITS)} bytes per edit`,
        "live = the county's handle readable with the title, polled every 2 ms; stored on disk " +
          `p50 ${p50(storedLatencies).toFixed(1)} ms, p99 ${p99(storedLatencies).toFixed(1)} ms`,
        ...warnings(),
      ].join("; "),
    };
  } finally {
    await cleanup().catch((e) => log(`cleanup: ${e}`));
    if (result) console.log(JSON.stringify(result));
    process.exitCode = exitCode;
  }
}

const role = process.argv[2];
const run = role === "county" ? county(process.argv[3]) : role === "village" ? village(process.argv[3]) : main();
run.catch((e) => {
  console.error(`automerge_repo.mjs${role ? ` (${role})` : ""}: ${e?.stack ?? e}`);
  process.exit(1);
});
