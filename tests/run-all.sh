#!/usr/bin/env bash
# The test command: builds the workspace, runs the Rust tests, then the
# end-to-end suites with the real JavaScript and Python clients against the
# realtide binary. Works from any directory and on a fresh machine (needs
# cargo, node/npm and python3 on PATH, and PostgreSQL server binaries for the
# postgres_changes suites, which start throwaway clusters with tests/pg/cluster.sh;
# .ci/run installs what is missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\n==> %s\n' "$*"; }

say "cargo build --workspace"
cargo build --workspace

export REALTIDE_BIN="${REALTIDE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/realtide}"

# Every suite runs even when an earlier one fails; the exit status reports all.
FAILED=()

say "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-tests=pass || FAILED+=("rust")
else
  cargo test --workspace || FAILED+=("rust")
fi

say "JavaScript end-to-end tests (tests/js)"
cd "$ROOT/tests/js"
if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi
# One file at a time: each file starts its own server; keeps load low on 2 cores.
node --test --test-concurrency=1 --test-force-exit || FAILED+=("js")

say "Python end-to-end tests (tests/py)"
cd "$ROOT/tests/py"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Re-running pip on an up-to-date venv only checks the pins.
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
.venv/bin/python -m pytest -q || FAILED+=("py")

if [ "${#FAILED[@]}" -gt 0 ]; then
  say "FAILED suites: ${FAILED[*]}"
  exit 1
fi
