#!/usr/bin/env bash
# Rule figures for the README: ingest with and without 1,000 rules in force (alternating, one node,
# one run) and the alarm latency from a QoS 1 reading past a red threshold to the warning readable
# through the API.
#
# Usage: tests/bench/rules.sh   (RULES=n, ALARMS=n, MESSAGES_EACH=n to change the sizes)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
python3 -c "import paho.mqtt" 2>/dev/null || python3 -m pip install --quiet "paho-mqtt==2.2.0"
cargo build --release --locked --bin township-node --example mqtt_load 2>&1 | tail -1
exec python3 "$ROOT/tests/bench/rules.py" "$ROOT/target/release/township-node" "$ROOT/target/release/examples/mqtt_load"
