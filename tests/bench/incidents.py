"""Measures incident figures; called by incidents.sh with the release binary's path."""
import json, os, re, socket, subprocess, sys, tempfile, time, urllib.parse, urllib.request

BIN = sys.argv[1]
TARGET = int(os.environ.get("INCIDENTS", "100000"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOWNSHIP_")} | {"RUST_LOG": "warn", "TOWNSHIP_HTTP__HTTPS_LISTEN": "127.0.0.1:0"}

POST_LUA = r"""
local n = 0
local titles = {"路灯损坏不亮", "河道垃圾堆积", "违章搭建彩钢棚", "占道经营影响通行", "楼道堆放杂物", "山塘水位偏高"}
local cats = {"安全隐患", "环境卫生", "违章建筑", "道路交通", "消防安全", "防汛防台"}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
request = function()
  n = n + 1
  local i = (n % 6) + 1
  local village = string.format("330723001%03d", (n % 9) + 1)
  local body = string.format('{"category":"%s","title":"%s %d","description":"群众反映%s，编号%d，请尽快处理。","area":"%s","location":{"lat":28.89,"lon":119.81}}',
    cats[i], titles[i], n, titles[i], n, village)
  return wrk.format(nil, nil, nil, body)
end
"""

GET_LUA = r"""
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url, seconds, conns, script, token):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    out = subprocess.run(["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", f.name, url],
                         capture_output=True, text=True, check=True, env=ENV | {"TOKEN": token}).stdout
    os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"\s(50|99)%\s+([\d.]+\w+)", out))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, lat.get("50", "?"), lat.get("99", "?"), int(errors.group(1)) if errors else 0


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def total(base, token):
    """Records in the store, from /metrics (the list's total stops counting at 10,000)."""
    text = urllib.request.urlopen(f"{base}/metrics").read().decode()
    return int(float(re.search(r"^township_records (\S+)$", text, re.M).group(1)))


def main():
    keep = os.environ.get("KEEP_DIR")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = keep or scratch
        os.makedirs(tmp, exist_ok=True)
        node = f"{tmp}/node"
        if os.path.exists(node):
            raise SystemExit(f"{node} exists; remove it or choose another KEEP_DIR")
        pw = f"{tmp}/pw"
        open(pw, "w").write("Bench-Pass-2026\n")
        subprocess.run([BIN, "init", "--data-dir", node, "--area", "330723001", "--name", "bench", "--role", "township",
                        "--admin-password-file", pw], check=True, stdout=subprocess.DEVNULL, env=ENV)
        subprocess.run([BIN, "user", "add", "--data-dir", node, "--username", "bench.staff", "--role", "township_staff",
                        "--area", "330723001", "--password-file", pw], check=True, stdout=subprocess.DEVNULL, env=ENV)
        out = subprocess.run([BIN, "token", "create", "--data-dir", node, "--user", "bench.staff", "--name", "bench"],
                             check=True, capture_output=True, text=True, env=ENV).stdout
        token = out.strip()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([BIN, "serve", "--data-dir", node, "--listen", f"127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            for _ in range(500):
                try:
                    urllib.request.urlopen(f"{base}/readyz", timeout=1)
                    break
                except Exception:
                    time.sleep(0.01)
            for conns in (1, 32):
                rps, p50, p99, errors = wrk(f"{base}/api/v1/incidents", 10, conns, POST_LUA, token)
                print(f"incident creation, {conns} concurrent client(s): {rps:,.0f} incidents/s, p50 {p50}, p99 {p99}, non-2xx {errors}")
            filled = time.perf_counter()
            while (n := total(base, token)) < TARGET:
                wrk(f"{base}/api/v1/incidents", 15, 64, POST_LUA, token)
            took = time.perf_counter() - filled
            n = total(base, token)
            print(f"store filled to {n:,} incidents ({took:.0f} s); database {sum(os.path.getsize(os.path.join(node, f)) for f in os.listdir(node) if f.startswith('township.db')) / 1e6:.0f} MB")
            print(f"resident memory with {n:,} incidents: {rss_mib(proc.pid):.1f} MiB")
            queries = [
                ("list, newest 50", "/api/v1/incidents?limit=50"),
                ("list filtered by state and category", "/api/v1/incidents?limit=50&state=reported&category=" + urllib.parse.quote("环境卫生")),
                ("search, 4 characters (trigram index)", "/api/v1/incidents?limit=50&q=" + urllib.parse.quote("河道垃圾")),
                ("search, 2 characters (substring scan)", "/api/v1/incidents?limit=50&q=" + urllib.parse.quote("路灯")),
                ("search, no match", "/api/v1/incidents?limit=50&q=" + urllib.parse.quote("不存在的内容")),
            ]
            for name, path in queries:
                rps, p50, p99, errors = wrk(base + path, 8, 8, GET_LUA, token)
                print(f"{name}: p50 {p50}, p99 {p99}, {rps:,.0f} req/s with 8 clients, non-2xx {errors}")
            print(f"resident memory after the queries: {rss_mib(proc.pid):.1f} MiB")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


main()
