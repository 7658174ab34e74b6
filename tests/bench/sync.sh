#!/usr/bin/env bash
# Sync figures for the README: a cold sync of 10,000 incidents from a village to the county on
# loopback (time, bytes through a counting proxy, bytes per incident), and the latency from an edit
# at a connected village to it being readable at the county (p50/p99).
#
# Usage: tests/bench/sync.sh   (INCIDENTS=n to change the size; needs wrk)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
cargo build --release --locked --bin township-node 2>&1 | tail -1
exec python3 "$ROOT/tests/bench/sync.py" "$ROOT/target/release/township-node"
