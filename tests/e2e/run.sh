#!/usr/bin/env bash
# Runs the browser tests: installs what is missing (Chromium and the sqlite3
# tool from Debian when we are root, the npm packages from the lock file),
# builds the `kontakt` binary, and runs every tests/e2e/*.test.mjs with
# node's test runner against it.
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
  else
    echo "missing: ${need_apt[*]} (install them, or run as root)" >&2
    exit 1
  fi
fi

if [ ! -d tests/e2e/node_modules/playwright-core ] || [ ! -d tests/e2e/node_modules/axe-core ] \
  || [ tests/e2e/package-lock.json -nt tests/e2e/node_modules/.package-lock.json ]; then
  (cd tests/e2e && npm ci --no-audit --no-fund)
fi

if [ -z "${KONTAKT_BIN:-}" ]; then
  cargo build -p web --bin kontakt
fi

# One file at a time: each starts its own server and browser, and the
# machines that run this have two cores.
node --test --test-concurrency=1 tests/e2e/
