#!/usr/bin/env bash
# The tenants benchmark: TENANTS tenants (one database each) in one realtide, against a
# single-project realtide in the same run: memory per idle tenant, tenant start latency, and
# fan-out and joins through one tenant against the single project.
#
#   bench/tenants.sh [--quick]
#
# Writes bench/results/tenants.json (tenants-quick.json with --quick); docs/BENCHMARKS.md
# ("Tenants") quotes it. Starts its own PostgreSQL (tests/pg/cluster.sh); everything stops by
# itself and is removed on exit. Full mode: 100 tenants, 10,000 subscribers at 28 msgs/s,
# 20,000 joins/s; --quick: 10 tenants, 2,000 subscribers. Environment: TENANTS, SUBSCRIBERS,
# RATE, DURATION, JOINS_RATE, JOINS_DURATION, SERVER_RUST_LOG (warn).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."

quick=""
for arg in "$@"; do
  case "$arg" in
    --quick) quick="--quick" ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done

echo "==> cargo build --release (realtide, realtide-loadgen)"
cargo build --release -q -p realtide-server -p realtide-loadgen

out="bench/results/tenants.json"
[ -n "$quick" ] && out="bench/results/tenants-quick.json"
timeout --signal=TERM --kill-after=30 1800 python3 bench/lib/tenants.py $quick --output "$out"
