#!/usr/bin/env bash
# Alarm latency for the README, side by side in one run: township-node (reading -> rule -> warning
# committed -> "issue" event) against a Node-RED flow (mqtt in -> switch -> mqtt out) on the same
# mosquitto broker. Node-RED comes from tests/bench/node-red/package-lock.json (npm ci, once).
#
# Usage: tests/bench/alarm.sh   (ALARMS=n to change the count; 1000 by default)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
command -v mosquitto >/dev/null || { echo "mosquitto is needed (apt-get install mosquitto)" >&2; exit 1; }
python3 -c "import paho.mqtt" 2>/dev/null || python3 -m pip install --quiet "paho-mqtt==2.2.0"
if [ ! -x tests/bench/node-red/node_modules/.bin/node-red ]; then
  (cd tests/bench/node-red && npm ci --no-audit --no-fund --loglevel=error)
fi
cargo build --release --locked --bin township-node 2>&1 | tail -1
exec python3 "$ROOT/tests/bench/alarm.py" "$ROOT/target/release/township-node" "$ROOT/tests/bench/node-red"
