#!/usr/bin/env node
// PouchDB replicating to an express-pouchdb server (CouchDB's protocol), measured the way
// tests/bench/sync.py measures township-node: N incidents already at the "village" before the
// "county" is reached, bytes counted by a forwarding TCP proxy, cold-sync time from the first
// proxied connection until the county holds all N, then the latency from a new incident at the
// connected village to it being readable at the county, p50/p99 over 60 edits.
//
// Three processes, as with sync.py (village, county, and the proxy in the driver): one Node event
// loop for everything would make client, server and proxy take turns on one core.
//
// Usage: node pouchdb.mjs   (INCIDENTS=n, default 10000). Human lines go to stderr; the last line
// on stdout is one JSON object for tests/bench/sync_peers.sh.
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
const DB = "incidents";

// process.hrtime reads CLOCK_MONOTONIC, which is one clock for every process on the machine, so
// a time taken in the village process can be subtracted from one taken in the county process.
const now = () => Number(process.hrtime.bigint()) / 1e6;
const log = (...a) => console.error(...a);

// --- shared with automerge_repo.mjs (kept in each file so each runs on its own) ---

function uuid7() {
  const b = crypto.randomBytes(16);
  b.writeUIntBE(Date.now(), 0, 6);
  b[6] = 0x70 | (b[6] & 0x0f);
  b[8] = 0x80 | (b[8] & 0x3f);
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// The same incident as automerge_repo.mjs writes, so bytes per record compare; `idKey` is "_id"
// here because CouchDB documents carry their id in the body.
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

// --- the county: express-pouchdb over a LevelDB-backed PouchDB ---

async function county(dir) {
  childWarnings();
  const { default: PouchDB } = await import("pouchdb-node");
  const { default: express } = await import("express");
  const { default: expressPouchDB } = await import("express-pouchdb");
  const Pouch = PouchDB.defaults({ prefix: `${dir}/` });
  const app = express();
  // minimumForPouchDB: the routes replication uses, without the config and log files that the
  // full CouchDB mode writes into the working directory.
  app.use("/", expressPouchDB(Pouch, { mode: "minimumForPouchDB" }));
  // The county's database exists before any village replicates into it, as a deployed one would.
  const db = new Pouch(DB);
  await db.info();
  let server;
  serve({
    async start() {
      server = await new Promise((resolve, reject) => {
        const s = app.listen(0, "127.0.0.1", () => resolve(s)).once("error", reject);
      });
      return server.address().port;
    },
    // Polls the database's own count, in-process, so the poll costs no bytes through the proxy.
    async waitCount({ n, limitMs }) {
      const until = now() + limitMs;
      for (;;) {
        const { doc_count } = await db.info();
        if (doc_count >= n) return { at: now(), count: doc_count };
        if (now() > until) return { at: null, count: doc_count };
        await sleep(10);
      }
    },
    async waitId({ id, limitMs }) {
      const until = now() + limitMs;
      for (;;) {
        try {
          await db.get(id);
          return now();
        } catch (e) {
          if (e.status !== 404) throw e;
        }
        if (now() > until) throw new Error(`${id} not at the county after ${limitMs} ms`);
        await sleep(2);
      }
    },
    async verify({ titles }) {
      const want = new Set(titles);
      const { rows } = await db.allDocs({ include_docs: true });
      const got = rows.filter((r) => r.doc.kind === "incident" && want.has(r.doc.title)).length;
      return { docs: rows.length, matching: got };
    },
    async close() {
      if (server) {
        const closed = new Promise((r) => server.close(() => r()));
        server.closeAllConnections(); // the village's live replication holds one open
        await closed;
      }
      await db.close();
    },
  });
}

// --- the village: a LevelDB-backed PouchDB that replicates to the county ---

async function village(dir) {
  childWarnings();
  const { default: PouchDB } = await import("pouchdb-node");
  const db = new PouchDB(path.join(dir, DB));
  let live;
  serve({
    // bulkDocs in batches: the records exist before the county is reached, and how they got
    // there is not part of the measurement.
    async fill({ n }) {
      const titles = [];
      for (let i = 1; i <= n; i += 500) {
        const docs = [];
        for (let k = i; k < Math.min(i + 500, n + 1); k++) docs.push(incident(k, "_id"));
        const res = await db.bulkDocs(docs);
        const bad = res.find((r) => r.error);
        if (bad) throw new Error(`bulkDocs: ${bad.error} ${bad.reason}`);
        titles.push(...docs.map((d) => d.title));
      }
      return { count: (await db.info()).doc_count, titles };
    },
    // One-shot replication with PouchDB's defaults (batch_size 100, batches_limit 10).
    async replicate({ url }) {
      const started = now();
      const info = await db.replicate.to(url);
      return { started, done: now(), written: info.docs_written, ok: info.ok, errors: info.errors.length };
    },
    // Continuous replication; answers once it has caught up and is waiting for changes.
    async live({ url }) {
      live = db.replicate.to(url, { live: true, retry: true });
      await new Promise((resolve, reject) => {
        live.once("paused", resolve);
        live.once("error", reject);
      });
      return true;
    },
    async edit({ n }) {
      const doc = incident(n, "_id");
      await db.put(doc);
      return { id: doc._id, title: doc.title, at: now() };
    },
    async close() {
      live?.cancel();
      await db.close();
    },
  });
}

// --- the driver ---

const NOTES = [
  "pouchdb-node 9 (LevelDB via leveldown) replicating one-shot then live to express-pouchdb 4.2 " +
    "(minimumForPouchDB mode) on its own LevelDB; PouchDB replication defaults (batch_size 100, batches_limit 10)",
  "no fsync: PouchDB's LevelDB adapter writes batches without {sync:true}, so an acknowledged write " +
    "can be lost on power failure (village and county alike)",
];

async function main() {
  if (!(N > 0)) throw new Error(`INCIDENTS must be a positive integer, got ${process.env.INCIDENTS}`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "sync-peers-pouchdb-"));
  const children = [];
  let proxy;
  const cleanup = async () => {
    // The village first, so the county is not left serving its live replication.
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
    const url = `http://127.0.0.1:${await proxy.listen()}/${DB}`;

    const client = new Child("village", path.join(tmp, "village"));
    children.push(client);
    const filled = await client.call("fill", { n: N });
    if (filled.count !== N) throw new Error(`village holds ${filled.count} documents, wanted ${N}`);
    log(`village holds ${N.toLocaleString()} incidents`);

    const counted = server.call("waitCount", { n: N, limitMs: COLD_LIMIT_MS });
    counted.catch(() => {}); // awaited below; this only stops an early failure counting as unhandled
    const replicated = client.call("replicate", { url });
    // A replication that fails ends the wait at once rather than after the limit.
    const cold = await Promise.race([counted, replicated.then(() => counted)]);
    const bytes = proxy.up + proxy.down;
    const { up, down, connections } = proxy;
    if (cold.at === null) {
      // Reported, not thrown: how far it got is the finding.
      exitCode = 2;
      result = {
        stack: "pouchdb", records: N, seconds: null, records_per_s: null, bytes,
        bytes_per_record: Math.round(bytes / N), live_p50_ms: null, live_p99_ms: null,
        notes: [`cold sync did not finish in ${COLD_LIMIT_MS / 1000} s: the county holds ${cold.count} of ${N}`,
                ...NOTES, ...warnings()].join("; "),
      };
      log(result.notes);
      return;
    }
    const rep = await replicated;
    const first = proxy.firstConnected ?? rep.started;
    const seconds = (cold.at - first) / 1000;
    const check = await server.call("verify", { titles: filled.titles });
    if (check.matching !== N) throw new Error(`county holds ${check.matching} of the ${N} incidents after sync`);
    log(`cold sync of ${N.toLocaleString()} incidents village -> county on loopback: ${seconds.toFixed(2)} s ` +
        `(${Math.round(N / seconds).toLocaleString()} records/s) from the first connection, ` +
        `${(bytes / 1e6).toFixed(2)} MB on the wire (${(up / 1e6).toFixed(2)} up, ${(down / 1e6).toFixed(2)} down), ` +
        `${Math.round(bytes / N).toLocaleString()} bytes per record, ${connections} connections; ` +
        `the one-shot replication reported complete ${((rep.done - cold.at)).toFixed(0)} ms after the count was reached`);

    await client.call("live", { url });
    const liveBytes0 = proxy.up + proxy.down;
    const liveConnections0 = proxy.connections;
    const latencies = [];
    for (let i = 0; i < EDITS; i++) {
      const e = await client.call("edit", { n: N + 1 + i });
      const seen = await server.call("waitId", { id: e.id, limitMs: EDIT_LIMIT_MS });
      latencies.push(seen - e.at);
    }
    const liveBytes = proxy.up + proxy.down - liveBytes0;
    const l50 = p50(latencies);
    const l99 = p99(latencies);
    log(`edit at a connected village to readable at the county: p50 ${l50.toFixed(1)} ms, p99 ${l99.toFixed(1)} ms ` +
        `over ${EDITS} edits, ${Math.round(liveBytes / EDITS).toLocaleString()} bytes per edit on the wire`);

    result = {
      stack: "pouchdb",
      records: N,
      seconds: +seconds.toFixed(3),
      records_per_s: Math.round(N / seconds),
      bytes,
      bytes_per_record: Math.round(bytes / N),
      live_p50_ms: +l50.toFixed(1),
      live_p99_ms: +l99.toFixed(1),
      notes: [
        ...NOTES,
        `cold bytes ${up} up, ${down} down over ${connections} TCP connections (PouchDB's node-fetch 2 sends ` +
          `Connection: close, so each HTTP request opens one); live ${Math.round(liveBytes / EDITS)} bytes and ` +
          `${((proxy.connections - liveConnections0) / EDITS).toFixed(1)} connections per edit`,
        "county readability polled in-process with db.get every 2 ms; cold end polled with db.info every 10 ms",
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
  console.error(`pouchdb.mjs${role ? ` (${role})` : ""}: ${e?.stack ?? e}`);
  process.exit(1);
});
