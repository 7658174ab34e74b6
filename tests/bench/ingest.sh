#!/usr/bin/env bash
# Telemetry figures for the README, side by side in one run: durable ingest from MQTT publishers into
# the node (embedded broker, PUBACK after commit) against a peer pipeline of mosquitto + Python
# paho-mqtt + sqlite3 batching the same way, with CPU per reading for both; then the latency from a
# reading published to it being returned by the API, and disk bytes per stored reading.
#
# Usage: tests/bench/ingest.sh   (CONNECTIONS, MESSAGES_EACH, WINDOW to change the load)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
for pkg in mosquitto mosquitto-clients; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null
    break
  }
done
python3 -c "import paho.mqtt" 2>/dev/null || python3 -m pip install --quiet "paho-mqtt==2.2.0"
cargo build --release --locked --bin township-node --example mqtt_load 2>&1 | tail -1
exec python3 "$ROOT/tests/bench/ingest.py" "$ROOT/target/release/township-node" "$ROOT/target/release/examples/mqtt_load"
