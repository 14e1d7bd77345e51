#!/usr/bin/env bash
# The benchmark suite: fan-out (with the raw-socket ceiling and the Socket.IO 4
# peer), chat, connections (with the peer), presence, public and private joins, database
# broadcast, and (full mode) postgres_changes.
#
#   bench/run.sh [--quick] [--no-docs]
#
# Builds release binaries, installs the Socket.IO peer from its lockfile (skipped without node),
# runs bench/lib/suite.py (a fresh server per run, CPU and memory read from /proc), writes
# bench/results/suite.json (suite-quick.json with --quick) and regenerates the suite section of
# docs/BENCHMARKS.md. --quick took 37-41 s after the build (the full suite 141 s) and skips postgres_changes
# (bench/postgres_changes.sh, about 10 minutes, runs in full mode). Everything runs on loopback
# and stops by itself.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

quick=0
docs=1
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-docs) docs=0 ;;
    *) echo "usage: $0 [--quick] [--no-docs]" >&2; exit 2 ;;
  esac
done

echo "==> cargo build --release (realtide, realtide-loadgen)"
cargo build --release -q -p realtide-server -p realtide-loadgen

peer_flag=""
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  echo "==> Socket.IO peer (npm ci)"
  (cd bench/peers/socketio && npm ci --no-audit --no-fund --silent)
else
  echo "node not found: the Socket.IO peer is skipped" >&2
  peer_flag="--no-peer"
fi

if [ "$quick" = 1 ]; then
  out="bench/results/suite-quick.json"
  python3 bench/lib/suite.py --quick --output "$out" $peer_flag
else
  out="bench/results/suite.json"
  python3 bench/lib/suite.py --output "$out" $peer_flag
  bench/postgres_changes.sh $([ "$docs" = 1 ] || echo --no-docs)
fi

if [ "$docs" = 1 ]; then
  python3 bench/lib/render_suite.py "$out" docs/BENCHMARKS.md
fi
