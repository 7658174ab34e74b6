#!/usr/bin/env bash
# Record-store and account figures for the README: records per second through the store against
# plain SQLite rows with the same durability (same run, same disk), projection rebuild for 10,000
# documents, PBKDF2 verification time, and sign-in latency over HTTP against the release binary.
#
# Usage: tests/bench/records.sh   (RECORDS=n REBUILD_RECORDS=n to change sizes)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

cargo build --release --locked --example bench_store --bin township-node 2>&1 | tail -1
"$ROOT/target/release/examples/bench_store"

exec python3 - "$ROOT/target/release/township-node" <<'PY'
import json, os, socket, statistics, subprocess, sys, tempfile, time, urllib.request

BIN = sys.argv[1]
env = {k: v for k, v in os.environ.items() if not k.startswith("TOWNSHIP_")} | {"RUST_LOG": "warn", "TOWNSHIP_HTTP__HTTPS_LISTEN": "127.0.0.1:0"}
with tempfile.TemporaryDirectory() as tmp:
    pw = os.path.join(tmp, "admin.pw")
    open(pw, "w").write("Bench-Admin-Pass-1\n")
    subprocess.run([BIN, "init", "--data-dir", f"{tmp}/node", "--area", "330723001", "--name", "bench", "--role", "township",
                    "--admin-password-file", pw], check=True, stdout=subprocess.DEVNULL, env=env)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    proc = subprocess.Popen([BIN, "serve", "--data-dir", f"{tmp}/node", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(500):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1); break
            except Exception:
                time.sleep(0.01)
        times = []
        body = json.dumps({"username": "admin", "password": "Bench-Admin-Pass-1"}).encode()
        for _ in range(15):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/session", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
            started = time.perf_counter()
            with urllib.request.urlopen(req) as r:
                assert r.status == 200
            times.append(time.perf_counter() - started)
        times.sort()
        print(f"sign-in over HTTP (POST /api/v1/session, release build): median {statistics.median(times)*1000:.0f} ms, "
              f"max {times[-1]*1000:.0f} ms over {len(times)} sign-ins")
    finally:
        proc.terminate(); proc.wait(timeout=15)
PY
