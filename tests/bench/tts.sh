#!/usr/bin/env bash
# Speech synthesis time per 100 characters for the README: the node's speech path against espeak-ng
# alone on the same texts, in one run, and a cached message.
#
# Usage: tests/bench/tts.sh [messages]   (needs espeak-ng: apt-get install espeak-ng)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
command -v espeak-ng >/dev/null || { echo "espeak-ng is needed (apt-get install espeak-ng)" >&2; exit 1; }
cargo build --release --locked --example tts_time 2>&1 | tail -1
exec "$ROOT/target/release/examples/tts_time" "${1:-20}"
