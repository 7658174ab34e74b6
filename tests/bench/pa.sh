#!/usr/bin/env bash
# Loudspeaker figures for the README: alarm to amplifier (relay coil set at a pymodbus slave, first
# audio byte at the reference IP speaker) over ALARMS automatic broadcasts, then stop and correction
# latency over STOPS playing broadcasts each. The relay's RS-485 line is simulated at 9,600 baud by
# examples/line_sim between two socat pseudo-terminal pairs (pseudo-terminals have no speed), and a
# Modbus sensor is polled on the same line, as in a village cabinet.
#
# Usage: tests/bench/pa.sh   (ALARMS=n, STOPS=n to change the counts; 200 and 20 by default)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
command -v socat >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat >/dev/null; }
command -v espeak-ng >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }
python3 -c "import pymodbus, paho.mqtt" 2>/dev/null || python3 -m pip install --quiet "pymodbus==3.16.1" "pyserial==3.5" "paho-mqtt==2.2.0"
cargo build --release --locked --bin township-node --example line_sim 2>&1 | tail -1
TMP="$(mktemp -d)"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
socat pty,raw,echo=0,link="$TMP/node" pty,raw,echo=0,link="$TMP/line-a" & PIDS+=($!)
socat pty,raw,echo=0,link="$TMP/line-b" pty,raw,echo=0,link="$TMP/slave" & PIDS+=($!)
for f in node line-a line-b slave; do until [ -e "$TMP/$f" ]; do sleep 0.05; done; done
"$ROOT/target/release/examples/line_sim" "$TMP/line-a" "$TMP/line-b" 9600 >/dev/null & PIDS+=($!)
python3 "$ROOT/tests/interop/modbus_slave.py" --port "$TMP/slave" --baud 9600 --coil-log "$TMP/coils.log" >"$TMP/slave.log" 2>&1 & PIDS+=($!)
until grep -q ready "$TMP/slave.log"; do sleep 0.05; done
cd "$ROOT/tests/bench"
python3 pa.py "$ROOT/target/release/township-node" "$TMP/slave" "$TMP/node" "$TMP/coils.log" "$ROOT"
