#!/usr/bin/env bash
# Runs every test of township-node: formatting and lints, the Rust workspace tests, and the
# end-to-end tests against real peers (headless Chromium for the UI). Installs what those tests need
# when it is missing (Debian packages with apt-get, npm packages from the lock file); CI runs it as root.
#
# Usage: tests/run.sh            everything
#        SKIP_E2E=1 tests/run.sh only the Rust workspace
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '\n==> %s\n' "$*"; }

APT_UPDATED=0
need_debian_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}; run as root or install them first" >&2
    exit 1
  fi
  log "installing ${missing[*]}"
  if [ "$APT_UPDATED" -eq 0 ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Real peers for the sensor tests (tests/sensors.rs): a serial line from socat's pseudo-terminals,
# the mosquitto broker and its command-line clients, and Python for the pymodbus slave.
# xmllint (libxml2-utils) validates CAP against the OASIS schema; xmlsec1 verifies its signatures and
# signs the inbound alerts of the feed tests with keys openssl makes. espeak-ng speaks for the
# loudspeakers; lame makes the MP3s the emergency-broadcast platform simulator attaches.
need_debian_packages socat mosquitto mosquitto-clients libxml2-utils xmlsec1 openssl espeak-ng lame
command -v python3 >/dev/null || need_debian_packages python3 python3-pip
need_python_packages() {
  if python3 -c "import pymodbus, serial, paho.mqtt, gmssl; assert pymodbus.__version__ == '3.16.1'" 2>/dev/null; then
    return 0
  fi
  # gmssl: the emergency-broadcast platform simulator's own SM2/SM3 (tests/interop/ebd_platform.py).
  log "installing pymodbus, pyserial, paho-mqtt and gmssl from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "pymodbus==3.16.1" "pyserial==3.5" "paho-mqtt==2.2.0" "gmssl==3.2.2" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      "pymodbus==3.16.1" "pyserial==3.5" "paho-mqtt==2.2.0" "gmssl==3.2.2"
}
need_python_packages
# With the peers installed, a sensor test that cannot find one fails instead of skipping.
export TOWNSHIP_REQUIRE_PEERS=1

if [ -z "${SKIP_E2E:-}" ]; then
  # certutil (libnss3-tools) puts the hub's CA into the test browser's NSS database.
  need_debian_packages chromium fonts-wqy-microhei libnss3-tools
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test --workspace"
cargo test --workspace --locked -- --show-output 2>&1 | tee "$ROOT/target/cargo-test.log"
test "${PIPESTATUS[0]}" -eq 0
grep -h "^simulation:" "$ROOT/target/cargo-test.log" || true

log "UI module tests (node --test)"
node --test --test-reporter=spec tests/ui/

if [ -n "${SKIP_E2E:-}" ]; then
  log "SKIP_E2E set: end-to-end tests skipped"
  exit 0
fi

log "browser end-to-end tests (headless Chromium)"
# `cargo test` built the binary for the integration tests; a separate `cargo build` would compile
# tokio and everything above it again without the dev-dependency features (minutes on 2 cores).
[ -x "$ROOT/target/debug/township-node" ] || cargo build --locked --bin township-node
(
  cd tests/e2e
  if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/axe-core ]; then
    npm ci --no-audit --no-fund --loglevel=error
  fi
  mkdir -p "$ROOT/target/e2e"
  E2E_NODE_BIN="$ROOT/target/debug/township-node" E2E_ARTIFACTS="$ROOT/target/e2e" \
    node --test --test-concurrency=1 --test-reporter=spec ui.test.mjs phone.test.mjs layout.test.mjs cases.test.mjs work.test.mjs
)

log "all tests passed"
