#!/usr/bin/env bash
# Foundation figures for the README: release binary size, idle memory, time to the first 200 from
# /healthz, and /healthz throughput under wrk — the latter side by side with nginx answering a fixed
# JSON body on the same machine in the same run, so the ratio means something on a shared box.
#
# Usage: tests/bench/foundation.sh   (installs wrk and nginx with apt-get when missing; needs root then)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

for pkg in wrk nginx-light; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
  fi
done

cargo build --release --locked --bin township-node 2>&1 | tail -1
BIN="$ROOT/target/release/township-node"
exec python3 "$ROOT/tests/bench/foundation.py" "$BIN"
