#!/usr/bin/env bash
# Sync figures for the README: a cold sync of 10,000 incidents from a village to the county on
# loopback (time, bytes through a counting proxy, bytes per incident), and the latency from an edit
# at a connected village to it being readable at the county (p50/p99).
#
# Usage: tests/bench/sync.sh   (INCIDENTS=n to change the size; needs wrk)
#   CUT_AFTER=65536 PHOTOS_EVERY=10 INCIDENTS=5000 tests/bench/sync.sh   a link cut every 64 KB, with photos
#   IDLE_NODES=300 tests/bench/sync.sh   the live latency with 300 idle nodes connected to the county
#   PEERS=1 tests/bench/sync.sh   then the same figures for PouchDB and automerge-repo (sync_peers.sh),
#                                 in the same run, with the same INCIDENTS
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
if [ -n "${IDLE_NODES:-}" ]; then
  cargo build --release --locked --bin township-node --example idle_nodes 2>&1 | tail -1
else
  cargo build --release --locked --bin township-node 2>&1 | tail -1
fi
python3 "$ROOT/tests/bench/sync.py" "$ROOT/target/release/township-node"
if [ -n "${PEERS:-}" ]; then
  "$ROOT/tests/bench/sync_peers.sh"
fi
