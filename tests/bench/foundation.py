"""Measures the foundation figures; called by foundation.sh with the release binary's path."""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = sys.argv[1]
WRK_SECONDS = int(os.environ.get("WRK_SECONDS", "10"))
WRK_CONNECTIONS = int(os.environ.get("WRK_CONNECTIONS", "32"))
STARTS = int(os.environ.get("STARTS", "15"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz_ok(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("TOWNSHIP_")} | {"RUST_LOG": "warn", "TOWNSHIP_HTTP__HTTPS_LISTEN": "127.0.0.1:0"}


def start(data_dir, port):
    began = time.perf_counter()
    proc = subprocess.Popen(
        [BIN, "serve", "--data-dir", data_dir, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(),
    )
    while not healthz_ok(port):
        if proc.poll() is not None:
            raise SystemExit("node exited during start")
        if time.perf_counter() - began > 10:
            raise SystemExit("node did not answer within 10 s")
    return proc, time.perf_counter() - began


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wrk(url):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    return rps, (p99.group(1) if p99 else "?")


def nginx(port, tmp):
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location = /healthz {{
      default_type application/json;
      return 200 '{{"status":"ok","version":"0.1.0","node_id":"0123456789abcdef0123456789abcdef","area":"330723001","role":"township"}}';
    }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    deadline = time.time() + 5
    while not healthz_ok(port):
        if time.time() > deadline:
            raise SystemExit("nginx did not start")
        time.sleep(0.01)
    return proc


def main():
    size = os.path.getsize(BIN)
    print(f"release binary: {size / 1e6:.1f} MB ({size} bytes, stripped by the release profile)")
    tmp = tempfile.mkdtemp(prefix="township-bench-")
    try:
        data = os.path.join(tmp, "node")
        subprocess.run([BIN, "init", "--data-dir", data, "--area", "330723001", "--name", "bench", "--role", "township"],
                       check=True, stdout=subprocess.DEVNULL, env=clean_env())
        times = []
        for _ in range(STARTS):
            port = free_port()
            proc, took = start(data, port)
            times.append(took)
            stop(proc)
        print(f"start to first 200 from /healthz: median {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms over {STARTS} starts")

        port = free_port()
        proc, _ = start(data, port)
        time.sleep(2)
        idle = rss_kib(proc.pid)
        print(f"idle resident memory 2 s after start: {idle / 1024:.1f} MiB")

        node_rps, node_p99 = wrk(f"http://127.0.0.1:{port}/healthz")
        after = rss_kib(proc.pid)
        stop(proc)

        nport = free_port()
        ng = nginx(nport, tmp)
        try:
            ng_rps, ng_p99 = wrk(f"http://127.0.0.1:{nport}/healthz")
        finally:
            ng.send_signal(signal.SIGQUIT)
            ng.wait(timeout=10)
        print(f"/healthz with wrk -t2 -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s on loopback:")
        print(f"  township-node: {node_rps:,.0f} req/s, p99 {node_p99}, resident memory after load {after / 1024:.1f} MiB")
        print(f"  nginx (static JSON, 2 workers): {ng_rps:,.0f} req/s, p99 {ng_p99}")
        print(f"  ratio township-node / nginx: {node_rps / ng_rps:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
