#!/usr/bin/env bash
# Modbus figure for the README: read transactions per second (10 registers each) on one port at
# 115,200 baud through the node's own driver, against the line-rate bound. The line is simulated:
# the driver's port and the slave's port are two socat pseudo-terminal pairs joined by
# examples/line_sim, which lets bytes through only at the baud rate (pseudo-terminals have none).
# The slave is pymodbus. The bound is wire time for the request (8 bytes) and the answer (25 bytes)
# plus the silent interval after each, 3.5 characters or 1.75 ms above 19,200 baud.
#
# Usage: tests/bench/modbus.sh   (DURATION=seconds, BAUD=n to change)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BAUD="${BAUD:-115200}"
SECONDS_RUN="${DURATION:-10}"
command -v socat >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat >/dev/null; }
python3 -c "import pymodbus" 2>/dev/null || python3 -m pip install --quiet "pymodbus==3.16.1" "pyserial==3.5"
cargo build --release --locked --example line_sim --example modbus_rate 2>&1 | tail -1
TMP="$(mktemp -d)"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
socat pty,raw,echo=0,link="$TMP/node" pty,raw,echo=0,link="$TMP/line-a" & PIDS+=($!)
socat pty,raw,echo=0,link="$TMP/line-b" pty,raw,echo=0,link="$TMP/slave" & PIDS+=($!)
for f in node line-a line-b slave; do until [ -e "$TMP/$f" ]; do sleep 0.05; done; done
"$ROOT/target/release/examples/line_sim" "$TMP/line-a" "$TMP/line-b" "$BAUD" >/dev/null & PIDS+=($!)
python3 "$ROOT/tests/interop/modbus_slave.py" --port "$TMP/slave" --baud "$BAUD" >"$TMP/slave.log" 2>&1 & PIDS+=($!)
until grep -q ready "$TMP/slave.log"; do sleep 0.05; done
RESULT="$("$ROOT/target/release/examples/modbus_rate" "$TMP/node" "$BAUD" "$SECONDS_RUN")"
python3 - "$RESULT" "$BAUD" <<'PY'
import json, sys
r, baud = json.loads(sys.argv[1]), int(sys.argv[2])
char = 11 / baud
silent = 0.00175 if baud > 19200 else 3.5 * char
bound = 1 / ((8 + 25) * char + 2 * silent)
print(f"Modbus RTU at {baud} baud, reads of 10 holding registers from a pymodbus slave over a simulated line:")
print(f"  {r['per_second']:.1f} transactions/s ({r['transactions']} in {r['seconds']} s, {r['errors']} errors)")
print(f"  line-rate bound {bound:.1f}/s -> {100 * r['per_second'] / bound:.1f}% of the bound")
PY
