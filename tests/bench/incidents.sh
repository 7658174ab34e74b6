#!/usr/bin/env bash
# Incident figures for the README: creation rate and p50/p99 latency under concurrent clients, list
# and search p99 with 100,000 incidents in the store, and resident memory at that size. Runs the
# release binary on loopback and drives it with wrk (Lua scripts below).
#
# Usage: tests/bench/incidents.sh   (INCIDENTS=n to change the store size; needs wrk, installed
#        with apt-get when missing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
cargo build --release --locked --bin township-node 2>&1 | tail -1
exec python3 "$ROOT/tests/bench/incidents.py" "$ROOT/target/release/township-node"
