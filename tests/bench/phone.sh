#!/usr/bin/env bash
# The phone's figures (tests/bench/phone.mjs): shell loads, a 12 MP photo and exactly-once delivery
# over an emulated 400 kbit/s, 400 ms link in headless Chromium over HTTPS. Builds the release binary.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
for pkg in chromium libnss3-tools; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
done
cargo build --release --locked --bin township-node
(cd tests/e2e && [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --loglevel=error)
BENCH_NODE_BIN="$ROOT/target/release/township-node" node tests/bench/phone.mjs
