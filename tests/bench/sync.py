"""Measures sync figures; called by sync.sh with the release binary's path."""
import asyncio, json, os, re, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.parse, urllib.request

BIN = sys.argv[1]
N = int(os.environ.get("INCIDENTS", "10000"))
# CUT_AFTER=65536 cuts every connection after that many bytes (both directions): a village link in a storm.
CUT_AFTER = int(os.environ.get("CUT_AFTER", "0"))
# IDLE_NODES=300 connects that many idle simulated downstream nodes (examples/idle_nodes, built by
# sync.sh) to the county before the live-latency measurement.
IDLE_NODES = int(os.environ.get("IDLE_NODES", "0"))
# PHOTOS_EVERY=10 attaches a small photo (a 64x48 noise PNG, about 9 KB) to every tenth incident.
PHOTOS_EVERY = int(os.environ.get("PHOTOS_EVERY", "0"))
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


def cpu_seconds(pid):
    """User and system CPU time of a process so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def records(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return int(float(re.search(r"^township_records (\S+)$", text, re.M).group(1)))


class CountingProxy:
    """Forwards TCP to a target and counts the bytes each way."""

    def __init__(self, target, cut_after=0):
        self.target, self.up, self.down = target, 0, 0
        self.cut_after, self.connections = cut_after, 0
        # When the first connection reached the target: the village's reconnect backoff decides when
        # that is after the county starts, and it is not part of how fast sync moves records.
        self.first_connected = None
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self.start(), self.loop).result()

    async def start(self):
        await asyncio.start_server(self.handle, "127.0.0.1", self.port)

    async def pipe(self, reader, writer, up, moved):
        try:
            while data := await reader.read(65536):
                if self.cut_after:
                    data = data[: max(0, self.cut_after - moved[0])]
                moved[0] += len(data)
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
                if self.cut_after and moved[0] >= self.cut_after:
                    break
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
        self.connections += 1
        moved = [0]
        both = [asyncio.ensure_future(self.pipe(reader, w2, True, moved)),
                asyncio.ensure_future(self.pipe(r2, writer, False, moved))]
        # When one direction ends (or is cut), the connection ends both ways.
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        writer.close()
        w2.close()
        await asyncio.gather(*both, return_exceptions=True)


def noise_png(seed, width=64, height=48):
    """A PNG of noise, different for every seed, so every photo is its own attachment."""
    import random, struct, zlib
    rng = random.Random(seed)
    raw = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def attach_photos(port, token):
    """Attaches a photo to every PHOTOS_EVERY-th incident at the village; returns their sizes."""
    ids, cursor = [], None
    while True:
        q = "limit=200" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        r = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/incidents?{q}", headers={"Authorization": f"Bearer {token}"})
        page = json.load(urllib.request.urlopen(r))
        ids += [i["id"] for i in page["incidents"]]
        cursor = page.get("next_cursor")
        if not cursor or not page["incidents"]:
            break
    sizes = []
    boundary = "bench-boundary-5f2c"
    for n, incident in enumerate(ids[::PHOTOS_EVERY]):
        png = noise_png(n)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
        r = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/incidents/{incident}/attachments", data=body, method="POST",
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {token}"})
        urllib.request.urlopen(r).read()
        sizes.append(len(png))
    return sizes


def blob_count(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    m = re.search(r"^township_attachments (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


def main():
    with tempfile.TemporaryDirectory() as tmp:
        pw = f"{tmp}/pw"
        open(pw, "w").write("Bench-Pass-2026\n")
        county, village = f"{tmp}/county", f"{tmp}/village"
        run("init", "--data-dir", county, "--area", "330723", "--name", "county", "--role", "county", "--admin-password-file", pw)
        county_key = json.loads(run("id", "--data-dir", county))["public_key"]
        county_port = free_port()
        proxy = CountingProxy(county_port, CUT_AFTER)
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
        photos = attach_photos(vport, token) if PHOTOS_EVERY else []

        village_cpu = cpu_seconds(vp.pid)
        cp = serve(county, county_port)
        started = time.perf_counter()
        while records(county_port) < total:
            if time.perf_counter() - started > 600:
                raise SystemExit("cold sync did not finish in 10 minutes")
            time.sleep(0.05)
        while photos and blob_count(county_port) < len(photos):
            if time.perf_counter() - started > 1800:
                raise SystemExit("photos did not arrive in 30 minutes")
            time.sleep(0.05)
        done = time.perf_counter()
        county_cpu, village_cpu = cpu_seconds(cp.pid), cpu_seconds(vp.pid) - village_cpu
        took = done - (proxy.first_connected or started)
        waited = (proxy.first_connected or started) - started
        moved = proxy.up + proxy.down
        print(f"the village reconnected {waited:.1f} s after the county started (its backoff)")
        print(f"cold sync of {total:,} records village -> county on loopback: {took:.1f} s "
              f"({total / took:,.0f} records/s) from the first connection, "
              f"{moved / 1e6:.1f} MB on the wire ({proxy.up / 1e6:.1f} up, {proxy.down / 1e6:.1f} down), "
              f"{moved / total:,.0f} bytes per record")
        print(f"  CPU during it: county {county_cpu:.1f} s, village {village_cpu:.1f} s")
        if CUT_AFTER:
            print(f"  every connection cut after {CUT_AFTER:,} bytes: {proxy.connections:,} connections")
        if photos:
            print(f"  with {len(photos):,} photos ({sum(photos) / 1e6:.1f} MB) on every {PHOTOS_EVERY}th incident")

        idle = None
        if IDLE_NODES:
            county_key_now = json.loads(run("id", "--data-dir", county))["public_key"]
            idle = subprocess.Popen([os.path.join(os.path.dirname(BIN), "examples", "idle_nodes"), str(county_port),
                                     county_key_now, county_token, str(IDLE_NODES), "600"], stdout=subprocess.PIPE, text=True)
            if not idle.stdout.readline().startswith("connected"):
                raise SystemExit("the idle nodes did not connect")
            time.sleep(3)
        import http.client
        county_http = http.client.HTTPConnection("127.0.0.1", county_port)
        latencies = []
        for i in range(60):
            title = f"延迟测量 {i} {time.time_ns()}"
            body = json.dumps({"category": "其他", "title": title, "area": "330723001001"}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{vport}/api/v1/incidents", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            made = json.load(urllib.request.urlopen(req))
            # From the moment the village answered (the write is durable there), as the peers'
            # scripts time from their put.
            t0 = time.perf_counter()
            # Readable through the county's API: the incident itself (404 until it arrived), asked on
            # one kept-alive connection every 2 ms, as the peers' scripts read theirs.
            while True:
                county_http.request("GET", f"/api/v1/incidents/{made['id']}", headers={"Authorization": f"Bearer {county_token}"})
                answer = county_http.getresponse()
                answer.read()
                if answer.status == 200:
                    break
                time.sleep(0.002)
            latencies.append(time.perf_counter() - t0)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"edit at a connected village to readable at the county: p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms over {len(latencies)} edits"
              + (f", with {IDLE_NODES} idle nodes connected to the county" if IDLE_NODES else ""))
        if idle:
            idle.kill()
        for p in (vp, cp):
            p.terminate()
            p.wait(timeout=30)


main()
