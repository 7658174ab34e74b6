"""Measures sync figures; called by sync.sh with the release binary's path."""
import asyncio, json, os, re, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.parse, urllib.request

BIN = sys.argv[1]
N = int(os.environ.get("INCIDENTS", "10000"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOWNSHIP_")} | {"RUST_LOG": "warn", "TOWNSHIP_HTTP__HTTPS_LISTEN": "127.0.0.1:0"}
POST_LUA = r"""
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
request = function()
  n = n + 1
  local body = string.format('{"category":"环境卫生","title":"河道垃圾堆积 %d","description":"群众反映河道垃圾堆积，编号%d，请尽快处理。","area":"330723001001","location":{"lat":28.89,"lon":119.81}}', n, n)
  return wrk.format(nil, nil, nil, body)
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args):
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True, env=ENV).stdout


def serve(node, port):
    p = subprocess.Popen([BIN, "serve", "--data-dir", node, "--listen", f"127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    for _ in range(500):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return p
        except Exception:
            time.sleep(0.01)
    raise SystemExit("node did not start")


def records(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return int(float(re.search(r"^township_records (\S+)$", text, re.M).group(1)))


class CountingProxy:
    """Forwards TCP to a target and counts the bytes each way."""

    def __init__(self, target):
        self.target, self.up, self.down = target, 0, 0
        # When the first connection reached the target: the village's reconnect backoff decides when
        # that is after the county starts, and it is not part of how fast sync moves records.
        self.first_connected = None
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self.start(), self.loop).result()

    async def start(self):
        await asyncio.start_server(self.handle, "127.0.0.1", self.port)

    async def pipe(self, reader, writer, up):
        try:
            while data := await reader.read(65536):
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()

    async def handle(self, reader, writer):
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        if self.first_connected is None:
            self.first_connected = time.perf_counter()
        await asyncio.gather(self.pipe(reader, w2, True), self.pipe(r2, writer, False))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        pw = f"{tmp}/pw"
        open(pw, "w").write("Bench-Pass-2026\n")
        county, village = f"{tmp}/county", f"{tmp}/village"
        run("init", "--data-dir", county, "--area", "330723", "--name", "county", "--role", "county", "--admin-password-file", pw)
        county_key = json.loads(run("id", "--data-dir", county))["public_key"]
        county_port = free_port()
        proxy = CountingProxy(county_port)
        run("init", "--data-dir", village, "--area", "330723001001", "--name", "village", "--role", "village",
            "--admin-password-file", pw, "--upstream", f"http://127.0.0.1:{proxy.port}", "--upstream-key", county_key)
        village_key = json.loads(run("id", "--data-dir", village))["public_key"]
        run("enroll", "add", "--data-dir", county, "--public-key", village_key, "--area", "330723001001", "--name", "village")
        run("user", "add", "--data-dir", village, "--username", "bench.grid", "--role", "grid_worker", "--area", "330723001001", "--password-file", pw)
        token = run("token", "create", "--data-dir", village, "--user", "bench.grid", "--name", "bench").strip()
        run("user", "add", "--data-dir", county, "--username", "bench.it", "--role", "county_it", "--area", "330723", "--password-file", pw)
        county_token = run("token", "create", "--data-dir", county, "--user", "bench.it", "--name", "bench").strip()

        vport = free_port()
        vp = serve(village, vport)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(POST_LUA)
        while records(vport) < N + 1:
            subprocess.run(["wrk", "-t2", "-c32", "-d5s", "-s", f.name, f"http://127.0.0.1:{vport}/api/v1/incidents"],
                           check=True, capture_output=True, env=ENV | {"TOKEN": token})
        total = records(vport)
        print(f"village holds {total:,} records ({total - 1:,} incidents and one account)")

        cp = serve(county, county_port)
        started = time.perf_counter()
        while records(county_port) < total:
            if time.perf_counter() - started > 600:
                raise SystemExit("cold sync did not finish in 10 minutes")
            time.sleep(0.05)
        done = time.perf_counter()
        took = done - (proxy.first_connected or started)
        waited = (proxy.first_connected or started) - started
        moved = proxy.up + proxy.down
        print(f"the village reconnected {waited:.1f} s after the county started (its backoff)")
        print(f"cold sync of {total:,} records village -> county on loopback: {took:.1f} s "
              f"({total / took:,.0f} records/s) from the first connection, "
              f"{moved / 1e6:.1f} MB on the wire ({proxy.up / 1e6:.1f} up, {proxy.down / 1e6:.1f} down), "
              f"{moved / total:,.0f} bytes per record")

        latencies = []
        for i in range(60):
            title = f"延迟测量 {i} {time.time_ns()}"
            body = json.dumps({"category": "其他", "title": title, "area": "330723001001"}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{vport}/api/v1/incidents", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            urllib.request.urlopen(req).read()
            t0 = time.perf_counter()
            q = urllib.parse.quote(title)
            while True:
                r = urllib.request.Request(f"http://127.0.0.1:{county_port}/api/v1/incidents?q={q}&limit=1",
                                           headers={"Authorization": f"Bearer {county_token}"})
                if json.load(urllib.request.urlopen(r))["incidents"]:
                    break
                time.sleep(0.01)
            latencies.append(time.perf_counter() - t0)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"edit at a connected village to readable at the county: p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms over {len(latencies)} edits")
        for p in (vp, cp):
            p.terminate()
            p.wait(timeout=30)


main()
