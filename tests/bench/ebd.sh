#!/usr/bin/env bash
# Emergency-broadcast platform figures for the README: from the POST of a signed EBM package with
# a ~3 MB MP3 to the relay coil set (at a pymodbus slave) and the first audio byte at the reference
# IP speaker, over PACKAGES packages (100 by default); then SM2 verifications per second on one
# core, the node's (examples/ebd_verify, pinned with taskset) beside the platform simulator's
# (gmssl), and whole-package checks per second.
#
# Usage: tests/bench/ebd.sh   (PACKAGES=n to change the count)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need socat socat
need lame lame
python3 -c "import pymodbus, paho.mqtt, gmssl" 2>/dev/null || python3 -m pip install --quiet "pymodbus==3.16.1" "pyserial==3.5" "paho-mqtt==2.2.0" "gmssl==3.2.2"
cargo build --release --locked --bin township-node --example ebd_verify 2>&1 | tail -1
TMP="$(mktemp -d)"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
# The relay board on a pseudo-terminal pair (no line speed: this measures the node, not RS-485).
socat pty,raw,echo=0,link="$TMP/node" pty,raw,echo=0,link="$TMP/slave" & PIDS+=($!)
for f in node slave; do until [ -e "$TMP/$f" ]; do sleep 0.05; done; done
python3 "$ROOT/tests/interop/modbus_slave.py" --port "$TMP/slave" --baud 9600 --coil-log "$TMP/coils.log" >"$TMP/slave.log" 2>&1 & PIDS+=($!)
until grep -q ready "$TMP/slave.log"; do sleep 0.05; done
cd "$ROOT/tests/bench"
python3 ebd.py "$ROOT/target/release/township-node" "$TMP/slave" "$TMP/node" "$TMP/coils.log" "$ROOT"
# One core for the node's figures, as for the peer's (Python runs on one).
python3 - "$TMP/msg.mp3" <<'PY'
import sys, wave, math, struct, subprocess
w = wave.open(sys.argv[1] + ".wav", "wb"); w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)
s = b"".join(struct.pack("<h", int(2000 * math.sin(2 * math.pi * 440 * i / 22050))) for i in range(22050))
[w.writeframes(s) for _ in range(190)]; w.close()
subprocess.run(["lame", "--quiet", "-b", "128", sys.argv[1] + ".wav", sys.argv[1]], check=True)
PY
taskset -c 0 "$ROOT/target/release/examples/ebd_verify" "$TMP/msg.mp3"
