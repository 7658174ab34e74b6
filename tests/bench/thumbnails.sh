#!/usr/bin/env bash
# Thumbnail memory under hostile files, for the README: peak resident memory of the node while it
# answers 16 concurrent thumbnail requests, for each of four kinds of file (a 639-byte JPEG claiming
# 7,000 x 7,000 pixels, a PNG decompression bomb of the same size, a real one-colour 7,000 x 7,000
# JPEG, and 4,000 x 3,000 phone photos). With PEER_BIN set to another build of the node (the one
# before the bounded decoder, say), the same run measures it too, side by side.
#
# Usage: tests/bench/thumbnails.sh            PEER_BIN=/path/to/old/township-node tests/bench/thumbnails.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
cargo build --release --locked --bin township-node --example thumb_files 2>&1 | tail -1
FILES="$(mktemp -d)"
trap 'rm -rf "$FILES"' EXIT
"$ROOT/target/release/examples/thumb_files" "$FILES"
exec python3 "$ROOT/tests/bench/thumbnails.py" "$ROOT/target/release/township-node" "$FILES"
