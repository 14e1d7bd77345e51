#!/usr/bin/env bash
# Cluster benchmark: the same load against one realtide and against a cluster of 3 realtide
# nodes joined through a NATS server (JetStream, temporary store, loopback).
#
#   bench/cluster.sh [--quick] [--no-pg] [--no-docs]
#
# Builds release binaries and runs bench/lib/cluster.py:
#   - broadcast: 10,000 subscribers on one topic (spread round robin over the nodes), one
#     publisher (on node 1), 28 msgs/s (280,000 deliveries/s offered) then 14 msgs/s (half
#     load), against one node and against the cluster: deliveries/s, latency p50/p99, server CPU
#     per delivery (sum of the nodes' CPU time from /proc; nats-server's apart), inter-node
#     messages and bytes per broadcast (realtide_cluster_*_total deltas in /metrics), and the
#     latency added across nodes (p99 of subscribers on other nodes against the publisher's);
#   - postgres_changes with RLS (skipped with --no-pg): 1,000 users in 10 teams at 150
#     inserts/s, one node against the cluster (one node consumes the slot, each checks RLS for
#     its own subscribers): end-to-end p95, per-node deliveries, CPU and /metrics deltas.
# Writes bench/results/cluster.json (cluster-quick.json with --quick) and regenerates the
# cluster section of docs/BENCHMARKS.md. Needs nats-server (2.9 or newer; NATS_SERVER= to
# point at one) and, for the postgres_changes runs, PostgreSQL server binaries. Every wait is
# bounded, everything stops by itself and is removed on exit. --quick: 2,000 subscribers,
# 3 s phases, 300 users.
#
# Environment: SUBSCRIBERS, RATE, DURATION, DRAIN, NODES, PG_USERS, PG_TEAMS, PG_RATE,
# PG_DURATION, SERVER_RUST_LOG (warn), KEEP_LOGS=1 (keep the node and NATS logs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

quick=""
nopg=""
docs=1
for arg in "$@"; do
  case "$arg" in
    --quick) quick="--quick" ;;
    --no-pg) nopg="--no-pg" ;;
    --no-docs) docs=0 ;;
    *) echo "usage: $0 [--quick] [--no-pg] [--no-docs]" >&2; exit 2 ;;
  esac
done

echo "==> cargo build --release (realtide, realtide-loadgen)"
cargo build --release -q -p realtide-server -p realtide-loadgen

out="bench/results/cluster.json"
[ -n "$quick" ] && out="bench/results/cluster-quick.json"
# The whole run is bounded too (about 4 minutes in full mode).
timeout --signal=TERM --kill-after=30 1800 python3 bench/lib/cluster.py $quick $nopg --output "$out"

if [ "$docs" = 1 ]; then
  python3 bench/lib/render_cluster.py "$out" docs/BENCHMARKS.md
  echo "==> updated docs/BENCHMARKS.md"
fi
