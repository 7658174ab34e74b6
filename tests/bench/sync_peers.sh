#!/usr/bin/env bash
# The side-by-side peers of tests/bench/sync.sh: the same cold sync of N incidents from a village to
# the county and the same edit-to-readable latency, measured the same way (bytes through a counting
# TCP proxy, time from the first connection), for two sync stacks a county could deploy instead:
# PouchDB replicating to express-pouchdb, and automerge-repo with a sync server
# (tests/bench/sync_peers/*.mjs). Builds nothing in Rust.
#
# Usage: tests/bench/sync_peers.sh   (INCIDENTS=n to change the size, default 10000)
# Prints one JSON line per stack on stdout (progress goes to stderr):
#   {"stack":..., "records":N, "seconds":..., "records_per_s":..., "bytes":..., "bytes_per_record":...,
#    "live_p50_ms":..., "live_p99_ms":..., "notes":...}
# A stack whose cold sync did not finish still prints its line (seconds null, why in notes); the
# script then exits non-zero after running the other one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="$ROOT/tests/bench/sync_peers"
export INCIDENTS="${INCIDENTS:-10000}"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# The scripts were written on Node 20 and need 18 at least (http.Server.closeAllConnections).
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 18 ]; then
  echo "sync_peers.sh: node $(node -v) is too old (need 18 or newer)" >&2
  exit 1
fi
# Only what the lock file names, so both stacks are the versions the figures were taken with.
if [ ! -d "$DIR/node_modules" ]; then
  (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

status=0
for script in pouchdb.mjs automerge_repo.mjs; do
  # Only the script's last stdout line is its figure; anything a library printed before it goes to stderr.
  if out="$(node "$DIR/$script")"; then rc=0; else rc=$?; fi
  last="$(printf '%s\n' "$out" | tail -n 1)"
  if [ -n "$(printf '%s\n' "$out" | head -n -1)" ]; then printf '%s\n' "$out" | head -n -1 >&2; fi
  case "$last" in
    "{"*) printf '%s\n' "$last" ;;
    *) echo "sync_peers.sh: $script printed no figure (exit $rc)" >&2 ;;
  esac
  if [ "$rc" -ne 0 ]; then
    echo "sync_peers.sh: $script exited $rc" >&2
    status=1
  fi
done
exit "$status"
