#!/usr/bin/env bash
# County resident memory and CPU with 300 connected idle downstream nodes (simulated clients that run
# the real handshake and engine). Usage: tests/bench/sync_idle.sh   (NODES=n, SECONDS_IDLE=s)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
cargo build --release --locked --bin township-node --example idle_nodes 2>&1 | tail -1
exec python3 - "$ROOT/target/release" <<'PY'
import json, os, socket, subprocess, sys, tempfile, time, urllib.request
REL = sys.argv[1]
BIN = f"{REL}/township-node"
NODES = int(os.environ.get("NODES", "300"))
IDLE = int(os.environ.get("SECONDS_IDLE", "30"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOWNSHIP_")} | {"RUST_LOG": "warn", "TOWNSHIP_HTTP__HTTPS_LISTEN": "127.0.0.1:0"}
def run(*a): return subprocess.run([BIN, *a], check=True, capture_output=True, text=True, env=ENV).stdout
def stat(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
    return ticks, rss / 1024
with tempfile.TemporaryDirectory() as tmp:
    pw = f"{tmp}/pw"; open(pw, "w").write("Bench-Pass-2026\n")
    county = f"{tmp}/county"
    run("init", "--data-dir", county, "--area", "330723", "--name", "county", "--role", "county", "--admin-password-file", pw)
    key = json.loads(run("id", "--data-dir", county))["public_key"]
    run("user", "add", "--data-dir", county, "--username", "bench.it", "--role", "county_it", "--area", "330723", "--password-file", pw)
    token = run("token", "create", "--data-dir", county, "--user", "bench.it", "--name", "bench").strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    cp = subprocess.Popen([BIN, "serve", "--data-dir", county, "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    for _ in range(500):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1); break
        except Exception:
            time.sleep(0.01)
    _, rss_before = stat(cp.pid)
    clients = subprocess.Popen([f"{REL}/examples/idle_nodes", str(port), key, token, str(NODES), str(IDLE + 30)], stdout=subprocess.PIPE, text=True)
    assert clients.stdout.readline().startswith("connected")
    time.sleep(5)
    t0, _ = stat(cp.pid); w0 = time.time()
    time.sleep(IDLE)
    t1, rss = stat(cp.pid); w1 = time.time()
    hz = os.sysconf("SC_CLK_TCK")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    connected = next(l.split()[1] for l in metrics.splitlines() if l.startswith("township_sync_downstream_connected "))
    print(f"county with {connected} connected idle downstream nodes: resident memory {rss:.1f} MiB "
          f"(idle alone {rss_before:.1f} MiB), CPU {100 * (t1 - t0) / hz / (w1 - w0):.1f}% of one core over {IDLE} s")
    clients.kill(); cp.terminate(); cp.wait(timeout=30)
PY
