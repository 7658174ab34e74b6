"""Alarm latency side by side; called by alarm.sh with the release binary.

One mosquitto broker; township-node subscribes to it as its external broker, and a Node-RED flow
(mqtt in -> switch on the threshold -> mqtt out) subscribes to the same topic. For each alarm the
script publishes one QoS 1 reading past red (rule: threshold, red at 100, `for` 0, auto-issue red) and
times, from the publish:
- ours: the warning committed (SQLite, synchronous=FULL) and its in-process "issue" event delivered,
  observed as that event arriving on the node's event stream (/api/v1/warnings/events);
- Node-RED's: its output message arriving on `nodered/alarm` (held in memory, nothing stored).
Then a reading below the threshold clears our warning before the next alarm.
"""
import http.client, json, os, queue, signal, socket, statistics, subprocess, sys, tempfile, threading, time

import paho.mqtt.client as mqtt
from benchlib import free_port, wait_port

BIN, NODE_RED_DIR = sys.argv[1], sys.argv[2]
ALARMS = int(os.environ.get("ALARMS", "1000"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOWNSHIP_")} | {"RUST_LOG": "warn", "TOWNSHIP_HTTP__HTTPS_LISTEN": "127.0.0.1:0"}
ADMIN = "Bench-Admin-Pass-2026"


def request(port, method, path, body=None, cookie=None, csrf=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json"}
    if cookie:
        headers |= {"cookie": cookie, "x-csrf-token": csrf}
    c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    r = c.getresponse()
    data = r.read()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: {r.status} {data[:300]!r}")
    return r, (json.loads(data) if data else None)


def follow_events(port, cookie, out):
    """Puts (arrival time, event) for every warning event on the node's stream into `out`."""
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/api/v1/warnings/events", headers={"cookie": cookie})
    r = c.getresponse()
    event = None
    while True:
        line = r.fp.readline()
        if not line:
            return
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "warning":
            out.put((time.perf_counter(), json.loads(line[6:])))


def pct(values, p):
    s = sorted(values)
    return s[max(0, int(len(s) * p) - 1)]


def main():
    tmp = tempfile.mkdtemp(prefix="alarm-bench-")
    broker_port, http_port, red_port = free_port(), free_port(), free_port()
    conf = os.path.join(tmp, "mosquitto.conf")
    open(conf, "w").write(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    procs = [subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    DEBUG = os.environ.get("BENCH_DEBUG")  # node logs and warm-up progress on stderr
    wait_port(broker_port, 3000)

    node = os.path.join(tmp, "node")
    pw = os.path.join(tmp, "admin.pw")
    open(pw, "w").write(ADMIN + "\n")
    subprocess.run([BIN, "init", "--data-dir", node, "--area", "330723001", "--name", "bench", "--role", "township",
                    "--admin-password-file", pw], check=True, capture_output=True, env=ENV)
    open(os.path.join(node, "township-node.toml"), "w").write(
        f'[mqtt.external]\nhost = "127.0.0.1"\nport = {broker_port}\nclient_id = "township-bench"\n'
        '[[devices]]\nid = "bench-00"\nname = "bench"\narea = "330723001"\ndriver = "mqtt"\n')
    procs.append(subprocess.Popen([BIN, "serve", "--data-dir", node, "--listen", f"127.0.0.1:{http_port}"],
                                  stdout=None if DEBUG else subprocess.DEVNULL, stderr=None if DEBUG else subprocess.DEVNULL,
                                  env=ENV | ({"RUST_LOG": "info"} if DEBUG else {})))
    red_dir = os.path.join(tmp, "node-red")
    os.makedirs(red_dir)
    for f in ("flow.json", "settings.js"):
        open(os.path.join(red_dir, f), "w").write(open(os.path.join(NODE_RED_DIR, f)).read())
    procs.append(subprocess.Popen(
        [os.path.join(NODE_RED_DIR, "node_modules", ".bin", "node-red"), "--userDir", red_dir,
         "--settings", os.path.join(red_dir, "settings.js"), "flow.json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=os.environ | {"MQTT_PORT": str(broker_port), "NODE_RED_PORT": str(red_port)}))
    try:
        wait_port(http_port)
        r, body = request(http_port, "POST", "/api/v1/session", {"username": "admin", "password": ADMIN})
        cookie, csrf = r.getheader("set-cookie").split(";")[0], body["csrf_token"]
        request(http_port, "POST", "/api/v1/rules",
                {"name": "alarm", "area": "330723001", "device": "bench-00", "metric": "alarm",
                 "kind": "threshold", "levels": {"red": 100}, "event": "flood", "auto_issue": ["red"]},
                cookie, csrf)
        ours = queue.Queue()
        threading.Thread(target=follow_events, args=(http_port, cookie, ours), daemon=True).start()

        theirs = queue.Queue()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-listener")
        sub.on_message = lambda c, u, m: theirs.put(time.perf_counter())
        sub.connect("127.0.0.1", broker_port)
        sub.subscribe("nodered/alarm", qos=1)
        sub.loop_start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sensor")
        pub.connect("127.0.0.1", broker_port)
        pub.loop_start()

        def drain(q):
            while not q.empty():
                q.get_nowait()

        def wait_event(action, deadline=10):
            end = time.perf_counter() + deadline
            while True:
                at, e = ours.get(timeout=max(0.01, end - time.perf_counter()))
                if e["action"] == action:
                    return at

        # Warm up until both sides have answered once (Node-RED takes seconds to start; the node
        # loads the rule within a second, from stored readings if they came first).
        ts = int(time.time() * 1000) - 3_600_000
        ours_seen = theirs_seen = False
        for attempt in range(60):
            ts += 1000
            pub.publish("sensors/bench-00", json.dumps({"ts": ts, "alarm": 150}), qos=1).wait_for_publish()
            end = time.perf_counter() + 1
            while time.perf_counter() < end and not (ours_seen and theirs_seen):
                try:
                    at, e = ours.get(timeout=0.05)
                    ours_seen |= e["action"] == "issue"
                except queue.Empty:
                    pass
                try:
                    theirs.get_nowait()
                    theirs_seen = True
                except queue.Empty:
                    pass
            if ours_seen and theirs_seen:
                break
            if DEBUG:
                print(f"waiting: node answered {ours_seen}, Node-RED answered {theirs_seen}", file=sys.stderr)
        else:
            raise SystemExit("the node or Node-RED never answered an alarm")
        ts += 1000
        pub.publish("sensors/bench-00", json.dumps({"ts": ts, "alarm": 10}), qos=1).wait_for_publish()
        wait_event("all_clear")
        time.sleep(0.5)
        drain(ours)
        drain(theirs)

        lat_ours, lat_theirs = [], []
        for _ in range(ALARMS):
            ts += 1000
            started = time.perf_counter()
            pub.publish("sensors/bench-00", json.dumps({"ts": ts, "alarm": 150}), qos=1)
            lat_ours.append((wait_event("issue") - started) * 1000)
            lat_theirs.append((theirs.get(timeout=10) - started) * 1000)
            ts += 1000
            pub.publish("sensors/bench-00", json.dumps({"ts": ts, "alarm": 10}), qos=1).wait_for_publish()
            wait_event("all_clear")
        print(f"alarm latency over {ALARMS} alarms, QoS 1 reading past red on one mosquitto broker:")
        print(f"  township-node (warning committed, 'issue' event delivered): p50 {statistics.median(lat_ours):.1f} ms, "
              f"p99 {pct(lat_ours, 0.99):.1f} ms")
        print(f"  Node-RED 4.1.8 (mqtt in -> switch -> mqtt out, nothing stored): p50 {statistics.median(lat_theirs):.1f} ms, "
              f"p99 {pct(lat_theirs, 0.99):.1f} ms")
        print(f"  ratio ours/Node-RED: p50 {statistics.median(lat_ours) / statistics.median(lat_theirs):.2f}, "
              f"p99 {pct(lat_ours, 0.99) / pct(lat_theirs, 0.99):.2f}")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


main()
