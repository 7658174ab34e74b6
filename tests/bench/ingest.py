"""Measures telemetry figures; called by ingest.sh with the release binary and the load generator."""
import json, os, re, signal, socket, sqlite3, statistics, subprocess, sys, tempfile, time, urllib.request

import paho.mqtt.client as mqtt
from benchlib import cpu_seconds, free_port, wait_port

BIN, LOAD = sys.argv[1], sys.argv[2]
K = int(os.environ.get("CONNECTIONS", "8"))
M = int(os.environ.get("MESSAGES_EACH", "25000"))
W = int(os.environ.get("WINDOW", "100"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOWNSHIP_")} | {"RUST_LOG": "warn", "TOWNSHIP_HTTP__HTTPS_LISTEN": "127.0.0.1:0"}
PASSWORD = "bench-device-secret"
ADMIN = "Bench-Admin-Pass-2026"
HERE = os.path.dirname(os.path.abspath(__file__))


def used_bytes(db):
    c = sqlite3.connect(db)
    pages, free, size = (c.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
    c.close()
    return (pages - free) * size


def start_node(node, http, mqtt_port):
    p = subprocess.Popen([BIN, "serve", "--data-dir", node, "--listen", f"127.0.0.1:{http}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    wait_port(http)
    wait_port(mqtt_port)
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def run_load(port, password):
    out = subprocess.run([LOAD, f"127.0.0.1:{port}", str(K), str(M), str(W), "bench-", password],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def login(http):
    req = urllib.request.Request(f"http://127.0.0.1:{http}/api/v1/session", method="POST",
                                 data=json.dumps({"username": "admin", "password": ADMIN}).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.headers["set-cookie"].split(";")[0]


def main():
    tmp = tempfile.mkdtemp(prefix="ingest-bench-")
    node = os.path.join(tmp, "node")
    pw_file = os.path.join(tmp, "admin.pw")
    open(pw_file, "w").write(ADMIN + "\n")
    subprocess.run([BIN, "init", "--data-dir", node, "--area", "330723001", "--name", "bench", "--role", "township",
                    "--admin-password-file", pw_file], check=True, capture_output=True, env=ENV)
    http, mqtt_port = free_port(), free_port()
    devices = "".join(
        f'\n[[devices]]\nid = "bench-{i:02}"\nname = "bench {i}"\narea = "330723001"\ndriver = "mqtt"\npassword = "{PASSWORD}"\n'
        for i in range(K))
    open(os.path.join(node, "township-node.toml"), "w").write(f'[mqtt]\nlisten = "127.0.0.1:{mqtt_port}"\n{devices}')
    db = os.path.join(node, "township.db")

    # An empty start and stop first, so the baseline size includes everything but readings.
    stop(start_node(node, http, mqtt_port))
    base = used_bytes(db)

    # 1. The node: durable ingest (every PUBACK follows the commit).
    p = start_node(node, http, mqtt_port)
    # Both sides are timed the same way: from just before the publishers start until the last reading
    # is committed (for the node that is the last PUBACK, which follows the commit).
    cpu0 = cpu_seconds(p.pid)
    started = time.perf_counter()
    run_load(mqtt_port, PASSWORD)
    node_seconds = time.perf_counter() - started
    node_cpu = cpu_seconds(p.pid) - cpu0
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics").read().decode()
    committed = int(float(re.search(r"^township_telemetry_readings_committed_total (\S+)$", metrics, re.M).group(1)))
    commits = int(float(re.search(r"^township_telemetry_commits_total (\S+)$", metrics, re.M).group(1)))
    n = K * M
    assert committed == n, f"node committed {committed} of {n}"

    # 2. Latency: publish one reading (QoS 1), then read it back through the API.
    cookie = login(http)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="latency")
    pub.username_pw_set("bench-00", PASSWORD)
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    latencies = []
    for i in range(200):
        ts = int(time.time() * 1000) - 3_600_000 + i  # unique, and not in the way of the bulk load
        started = time.perf_counter()
        pub.publish("sensors/bench-00", json.dumps({"ts": ts, "level": i}), qos=1).wait_for_publish()
        url = f"http://127.0.0.1:{http}/api/v1/sensors/bench-00/readings?metric=level&from={ts}&to={ts + 1}"
        while True:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"cookie": cookie})) as r:
                if json.load(r)["points"]:
                    break
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.02)
    pub.loop_stop()
    pub.disconnect()
    stop(p)
    per_reading_bytes = (used_bytes(db) - base) / (n + len(latencies))

    # 3. The peer: mosquitto + paho-mqtt + sqlite3, the same load.
    port = free_port()
    conf = os.path.join(tmp, "mosquitto.conf")
    open(conf, "w").write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                          "max_queued_messages 0\nmax_inflight_messages 100\n")
    broker = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    peer = subprocess.Popen([sys.executable, os.path.join(HERE, "peer_ingest.py"), str(port),
                             os.path.join(tmp, "peer.db"), str(n)], stdout=subprocess.PIPE, text=True)
    assert peer.stdout.readline().strip() == "ready"
    b0, s0 = cpu_seconds(broker.pid), cpu_seconds(peer.pid)
    started = time.perf_counter()
    peer_load = run_load(port, "-")
    peer_result = json.loads(peer.stdout.readline())
    peer_seconds = time.perf_counter() - started
    peer_cpu = cpu_seconds(broker.pid) - b0 + cpu_seconds(peer.pid) - s0
    peer.wait(timeout=60)
    broker.terminate()
    broker.wait()

    assert peer_result["readings"] == n, peer_result
    node_rate = n / node_seconds
    peer_rate = n / peer_seconds
    node_us = node_cpu / n * 1e6
    peer_us = peer_cpu / n * 1e6
    lat = sorted(latencies)
    print(f"load: {K} connections x {M} QoS 1 messages of one reading, window {W}")
    print(f"node (embedded broker, PUBACK after commit): {n} readings in {node_seconds:.2f} s = {node_rate:,.0f} readings/s "
          f"in {commits} commits; CPU {node_cpu:.2f} s = {node_us:.1f} us/reading")
    print(f"peer (mosquitto + paho-mqtt + sqlite3): {n} readings in {peer_seconds:.2f} s = {peer_rate:,.0f} readings/s "
          f"(publishers done in {peer_load['seconds']:.2f} s); CPU {peer_cpu:.2f} s = {peer_us:.1f} us/reading")
    print(f"ratio: {node_rate / peer_rate:.1f}x the peer's rate at {node_us / peer_us:.2f} of its CPU per reading")
    print(f"publish -> API latency over {len(lat)} readings: p50 {statistics.median(lat):.1f} ms, p99 {lat[int(len(lat) * 0.99) - 1]:.1f} ms")
    print(f"disk: {per_reading_bytes:.1f} bytes per stored reading (raw + minute and hour aggregates, {n} readings)")


main()
