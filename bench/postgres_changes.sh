#!/usr/bin/env bash
# postgres_changes benchmark: realtide streaming one RLS table to 1,000 subscribers (10 teams
# of 100 users; each insert reaches the 100 members of its team).
#
#   bench/postgres_changes.sh [--quick] [--no-docs]
#
# Starts a throwaway PostgreSQL (tests/pg/cluster.sh), builds release binaries, and for every
# run starts a fresh realtide (so that its CPU time and peak RSS belong to that run), drives it
# with `realtide-loadgen postgres-changes`, and records server / PostgreSQL / load generator CPU
# seconds and peak RSS from /proc and /usr/bin/time. Runs:
#   - RLS rate sweep (RATES, default "25 50 100 200 300 400" inserts/s, DURATION s each): the highest
#     rate that kept up is the max sustained authorized delivery rate;
#   - RLS at half the target load (HALF_RATE, default 150 inserts/s): latency;
#   - without RLS (NORLS_RATES, default "50 100 200" inserts/s, every row to all subscribers).
# Writes bench/results/postgres_changes.json (all runs) and regenerates the postgres_changes
# section of docs/BENCHMARKS.md. Stops by itself and removes the cluster on any exit.
#
# Environment: SERVER_BIN (another realtide binary, e.g. an older build to compare), USERS
# (1000), TEAMS (10), DURATION (20), RATES, HALF_RATE, NORLS_RATES,
# DB_POOL_SIZE (server's, default 4), SERVER_RUST_LOG (warn).
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

USERS="${USERS:-1000}"
TEAMS="${TEAMS:-10}"
if [ "$quick" = 1 ]; then
  DURATION="${DURATION:-5}"
  RATES="${RATES:-100 300}"
  HALF_RATE="${HALF_RATE:-150}"
  NORLS_RATES="${NORLS_RATES:-50}"
else
  DURATION="${DURATION:-20}"
  RATES="${RATES:-25 50 100 200 300 400}"
  HALF_RATE="${HALF_RATE:-150}"
  NORLS_RATES="${NORLS_RATES:-50 100 200}"
fi
DRAIN="${DRAIN:-15}"
JWT_SECRET="realtide-bench-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export JWT_SECRET

work="$(mktemp -d /tmp/realtide-bench.XXXXXX)"
pg_dir=""
server_pid=""

cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -n "$pg_dir" ]; then "$root/tests/pg/cluster.sh" stop "$pg_dir" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building release binaries" >&2
cargo build --release -q -p realtide-server -p realtide-loadgen
server_bin="${SERVER_BIN:-$root/target/release/realtide}"
loadgen_bin="$root/target/release/realtide-loadgen"

echo "== starting PostgreSQL" >&2
"$root/tests/pg/cluster.sh" start >"$work/pg.env"
DB_URL="$(sed -n 's/^DB_URL=//p' "$work/pg.env")"
pg_dir="$(sed -n 's/^PG_DIR=//p' "$work/pg.env")"
export DB_URL
pg_version="$(psql -X -A -t "$DB_URL" -c 'show server_version' 2>/dev/null || echo unknown)"

clk_tck="$(getconf CLK_TCK)"

# CPU ticks of a process (utime + stime).
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# CPU ticks of the whole PostgreSQL cluster: the postmaster, its reaped children (cutime +
# cstime) and its live children.
pg_ticks() {
  local pm total pid
  pm="$(head -1 "$pg_dir/data/postmaster.pid")"
  total="$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat")"
  for pid in $(pgrep -P "$pm" || true); do
    total=$((total + $(proc_ticks "$pid")))
  done
  echo "$total"
}

# Each run gets its own replication slot and change journal (CHANGES_DIR), so that no run
# resumes the previous run's subscribers (same users, topic and bindings) or inherits its
# undelivered changes; the slot is dropped after the run.
start_server() {
  local log="$1" slot="$2"
  PORT=0 HOST=127.0.0.1 DB_URL="$DB_URL" JWT_SECRET="$JWT_SECRET" \
    SLOT_NAME="$slot" CHANGES_DIR="$work/changes" \
    DB_POOL_SIZE="${DB_POOL_SIZE:-4}" RUST_LOG="${SERVER_RUST_LOG:-warn}" \
    "$server_bin" >"$log" 2>&1 &
  server_pid=$!
  local port=""
  for _ in $(seq 1 100); do
    port="$(sed -n 's/^realtide listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log" | head -1)"
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; echo "realtide exited" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$port" ] || { echo "realtide did not report its port" >&2; exit 1; }
  server_port="$port"
  # Give the replication task a moment to attach to the slot.
  sleep 1
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

runs=()
run_one() {
  local name="$1" kind="$2" rls="$3" rate="$4"
  local out="$work/$name.json" slog="$work/$name.server.log" tlog="$work/$name.time"
  local slot="bench_${name//-/_}"
  echo "== $name: rls=$rls rate=$rate inserts/s, $USERS users, ${DURATION}s" >&2
  start_server "$slog" "$slot"
  local s0 p0 t0 t1
  s0="$(proc_ticks "$server_pid")"
  p0="$(pg_ticks)"
  t0="$(date +%s.%N)"
  local rc=0
  /usr/bin/time -v -o "$tlog" "$loadgen_bin" \
    --server-url "ws://127.0.0.1:$server_port/socket/websocket" --secret "$JWT_SECRET" \
    --output "$out" --label "$name" --max-runtime 600 \
    postgres-changes --users "$USERS" --teams "$TEAMS" --rate "$rate" --duration "$DURATION" \
    --drain "$DRAIN" --rls "$rls" --db-url "$DB_URL" || rc=$?
  t1="$(date +%s.%N)"
  local s1 p1 rss
  s1="$(proc_ticks "$server_pid")"
  p1="$(pg_ticks)"
  rss="$(awk '/^VmHWM:/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || echo 0)"
  stop_server
  psql -X -q "$DB_URL" -c "select pg_drop_replication_slot('$slot')" >/dev/null 2>&1 || true
  if [ ! -s "$out" ]; then
    echo "loadgen failed (exit $rc); server log tail:" >&2
    tail -20 "$slog" >&2
    return
  fi
  # Server warnings and errors go into the run's JSON (and to the terminal).
  local log_warn log_err log_lines
  log_warn="$(grep -c 'WARN' "$slog" || true)"
  log_err="$(grep -c 'ERROR' "$slog" || true)"
  log_lines="$({ grep -E 'WARN|ERROR' "$slog" || true; } | head -50 | jq -R . | jq -s .)"
  if [ "${log_warn:-0}" != 0 ] || [ "${log_err:-0}" != 0 ]; then
    echo "   server log: $log_warn warnings, $log_err errors:" >&2
    grep -E 'WARN|ERROR' "$slog" | head -10 | sed 's/^/     /' >&2 || true
  fi
  local lg_user lg_sys lg_rss
  lg_user="$(awk -F': ' '/User time/ {print $2}' "$tlog")"
  lg_sys="$(awk -F': ' '/System time/ {print $2}' "$tlog")"
  lg_rss="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tlog")"
  jq --arg kind "$kind" --arg exit "$rc" \
     --argjson server_cpu "$(echo "($s1 - $s0) / $clk_tck" | bc -l)" \
     --argjson server_rss "${rss:-0}" \
     --argjson pg_cpu "$(echo "($p1 - $p0) / $clk_tck" | bc -l)" \
     --argjson lg_cpu "$(echo "$lg_user + $lg_sys" | bc -l)" \
     --argjson lg_rss "${lg_rss:-0}" \
     --argjson wall "$(echo "$t1 - $t0" | bc -l)" \
     --argjson log_warn "${log_warn:-0}" --argjson log_err "${log_err:-0}" \
     --argjson log_lines "$log_lines" \
     '. + {kind: $kind, loadgen_exit: ($exit | tonumber),
           wall_s: $wall,
           server: {cpu_s: $server_cpu, peak_rss_kb: $server_rss,
                    cpu_us_per_delivery: (if .deliveries.delivered > 0
                       then ($server_cpu * 1e6 / .deliveries.delivered) else null end)},
           postgres: {cpu_s: $pg_cpu},
           loadgen: {cpu_s: $lg_cpu, peak_rss_kb: $lg_rss},
           server_log: {warn: $log_warn, error: $log_err, lines: $log_lines}}' "$out" >"$out.tmp"
  mv "$out.tmp" "$out"
  jq -r '"   -> \(.deliveries.delivered)/\(.deliveries.expected) delivered, \(.deliveries.per_s)/s, p95 \(.latency_ms.p95_ms) ms, wrong \(.deliveries.wrong), kept up \(.kept_up), server cpu \(.server.cpu_s|.*100|round/100) s"' "$out" >&2
  runs+=("$out")
}

for rate in $RATES; do run_one "rls-sweep-$rate" sweep on "$rate"; done
run_one "rls-half-$HALF_RATE" half on "$HALF_RATE"
for rate in $NORLS_RATES; do run_one "norls-$rate" norls off "$rate"; done

mkdir -p "$here/results"
result="$here/results/postgres_changes.json"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git -C "$root" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | head -1)"
[ -n "$dirty" ] && commit="$commit+dirty"
jq -s --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg commit "$commit" \
   --arg pg "$pg_version" --arg quick "$quick" \
   --arg os "$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown}")" \
   '{benchmark: "postgres_changes", date: $date, commit: $commit, quick: ($quick == "1"),
     postgres: $pg, os: $os, machine: (.[0].machine // null), runs: .}' \
   "${runs[@]}" >"$result"
echo "== wrote $result" >&2

if [ "$docs" = 1 ]; then
  python3 "$here/lib/render_postgres_changes.py" "$result" "$root/docs/BENCHMARKS.md"
  echo "== updated docs/BENCHMARKS.md" >&2
fi
