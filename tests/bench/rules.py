"""Rule figures; called by rules.sh with the release binary and the load generator.

1. Evaluation cost: the ingest load (8 MQTT connections x 25,000 QoS 1 readings) with no rules and with
   1,000 rules in force (half thresholds, half hourly rolling sums, none firing), alternating twice in
   one run on one node, so the ratio compares like with like.
2. Alarm latency: a QoS 1 reading past a red threshold (`for` = 0) until the raised warning is readable
   through the API, then back below until it clears; p50/p99 over ALARMS rounds.
"""
import json, os, re, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

import paho.mqtt.client as mqtt
from benchlib import cpu_seconds, free_port, wait_port

BIN, LOAD = sys.argv[1], sys.argv[2]
K, M, W = 8, int(os.environ.get("MESSAGES_EACH", "25000")), 100
RULES = int(os.environ.get("RULES", "1000"))
ALARMS = int(os.environ.get("ALARMS", "200"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOWNSHIP_")} | {"RUST_LOG": "warn", "TOWNSHIP_HTTP__HTTPS_LISTEN": "127.0.0.1:0"}
PASSWORD = "bench-device-secret"
ADMIN = "Bench-Admin-Pass-2026"


class Api:
    def __init__(self, http):
        self.base = f"http://127.0.0.1:{http}"
        req = urllib.request.Request(self.base + "/api/v1/session", method="POST",
                                     data=json.dumps({"username": "admin", "password": ADMIN}).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            self.cookie = r.headers["set-cookie"].split(";")[0]
            self.csrf = json.load(r)["csrf_token"]

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"cookie": self.cookie, "x-csrf-token": self.csrf,
                                              "content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            data = r.read()
            return json.loads(data) if data else None


def rule(i):
    device = f"bench-{i % K:02}"
    if i % 2:
        return {"name": f"bench rule {i}", "area": "330723001", "device": device, "metric": "rainfall",
                "kind": "threshold", "levels": {"blue": 1000 + i}, "event": "rainstorm"}
    return {"name": f"bench rule {i}", "area": "330723001", "device": device, "metric": "rainfall",
            "kind": "rolling_sum", "window": "1h", "levels": {"yellow": 1e12}, "event": "rainstorm"}


def load(mqtt_port, pid):
    cpu0, started = cpu_seconds(pid), time.perf_counter()
    subprocess.run([LOAD, f"127.0.0.1:{mqtt_port}", str(K), str(M), str(W), "bench-", PASSWORD],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - started
    return K * M / seconds, (cpu_seconds(pid) - cpu0) / (K * M) * 1e6


def main():
    tmp = tempfile.mkdtemp(prefix="rules-bench-")
    node = os.path.join(tmp, "node")
    pw = os.path.join(tmp, "admin.pw")
    open(pw, "w").write(ADMIN + "\n")
    subprocess.run([BIN, "init", "--data-dir", node, "--area", "330723001", "--name", "bench", "--role", "township",
                    "--admin-password-file", pw], check=True, capture_output=True, env=ENV)
    http, mqtt_port = free_port(), free_port()
    devices = "".join(f'\n[[devices]]\nid = "bench-{i:02}"\nname = "bench {i}"\narea = "330723001"\ndriver = "mqtt"\n'
                      f'password = "{PASSWORD}"\n' for i in range(K))
    open(os.path.join(node, "township-node.toml"), "w").write(f'[mqtt]\nlisten = "127.0.0.1:{mqtt_port}"\n{devices}')
    p = subprocess.Popen([BIN, "serve", "--data-dir", node, "--listen", f"127.0.0.1:{http}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    wait_port(http)
    wait_port(mqtt_port)
    api = Api(http)

    results = {"none": [], "rules": []}

    def with_rules():
        ids = [api.call("POST", "/api/v1/rules", rule(i))["id"] for i in range(RULES)]
        time.sleep(2)  # the watcher reloads rules on its one-second tick
        results["rules"].append(load(mqtt_port, p.pid))
        for rid in ids:
            api.call("DELETE", f"/api/v1/rules/{rid}")
        time.sleep(2)

    # A, B, B, A, A, B: each side goes first as often as the other, so warming up favours neither.
    for side in ["none", "rules", "rules", "none", "none", "rules"]:
        if side == "rules":
            with_rules()
        else:
            results["none"].append(load(mqtt_port, p.pid))

    # Alarm latency: one rule, red at 100 with `for` 0.
    alarm = api.call("POST", "/api/v1/rules", {"name": "alarm", "area": "330723001", "device": "bench-00",
                                               "metric": "alarm", "kind": "threshold", "levels": {"red": 100},
                                               "event": "flood", "auto_issue": ["red"]})
    time.sleep(2)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alarm")
    pub.username_pw_set("bench-00", PASSWORD)
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()

    def state_of_latest():
        ws = api.call("GET", "/api/v1/warnings?state=raised,issued")["warnings"]
        return [w for w in ws if w.get("rule") == alarm["id"]]

    latencies = []
    ts = int(time.time() * 1000) - 3_600_000
    for i in range(ALARMS):
        ts += 1000
        started = time.perf_counter()
        pub.publish("sensors/bench-00", json.dumps({"ts": ts, "alarm": 150}), qos=1).wait_for_publish()
        while not state_of_latest():
            pass
        latencies.append((time.perf_counter() - started) * 1000)
        ts += 1000
        pub.publish("sensors/bench-00", json.dumps({"ts": ts, "alarm": 10}), qos=1).wait_for_publish()
        while state_of_latest():
            time.sleep(0.002)
    pub.loop_stop()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)

    none_rate = statistics.median(r for r, _ in results["none"])
    rules_rate = statistics.median(r for r, _ in results["rules"])
    none_us = statistics.median(u for _, u in results["none"])
    rules_us = statistics.median(u for _, u in results["rules"])
    lat = sorted(latencies)
    print(f"ingest without rules: {', '.join(f'{r:,.0f}/s ({u:.1f} us CPU)' for r, u in results['none'])}")
    print(f"ingest with {RULES} rules: {', '.join(f'{r:,.0f}/s ({u:.1f} us CPU)' for r, u in results['rules'])}")
    print(f"medians: {none_rate:,.0f} readings/s without, {rules_rate:,.0f} with: a drop of {(1 - rules_rate / none_rate) * 100:.1f}% "
          f"in rate, CPU per reading {none_us:.1f} -> {rules_us:.1f} us")
    print(f"alarm, QoS 1 reading past red -> warning readable through the API: p50 {statistics.median(lat):.1f} ms, "
          f"p99 {lat[int(len(lat) * 0.99) - 1]:.1f} ms over {len(lat)} alarms")


main()
