#!/usr/bin/env bash
# Catch-up after an outage: 1,000 postgres_changes subscribers, realtide stopped (SIGTERM) for
# OUTAGE seconds while rows are inserted at RATE per second, then restarted on the same port
# with the same CHANGES_DIR and SLOT_NAME; every client reconnects and rejoins with the same
# join payload (retrying every RETRY_MS ±50 %) and must receive every row exactly once, in
# order.
#
#   bench/catchup.sh [--quick]
#
# Starts a throwaway PostgreSQL (tests/pg/cluster.sh), builds release binaries, and per mode
# (MODES, default "off on": without row level security every row goes to every subscriber,
# with it to the 100 members of its team) starts a fresh realtide with its own slot and
# journal directory, drives it with `realtide-loadgen catch-up` (which runs the stop and start
# commands written below and measures), stops it, checks its logs, and drops the slot.
# Writes bench/results/catchup.json. Loopback only; stops by itself and removes the cluster,
# the journals and the logs on any exit (the logs' warnings and errors are in the JSON).
#
# Environment: USERS (1000), TEAMS (10), RATE (500), OUTAGE (60), LIVE_RATE (50), BEFORE (5),
# AFTER (0), MODES ("off on"), RETRY_MS (200), CATCHUP_TIMEOUT (900), DB_POOL_SIZE (4),
# SERVER_RUST_LOG (warn), RESULT (bench/results/catchup.json).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done

if [ "$quick" = 1 ]; then
  USERS="${USERS:-200}"
  RATE="${RATE:-100}"
  OUTAGE="${OUTAGE:-10}"
  MODES="${MODES:-off}"
fi
USERS="${USERS:-1000}"
TEAMS="${TEAMS:-10}"
RATE="${RATE:-500}"
OUTAGE="${OUTAGE:-60}"
LIVE_RATE="${LIVE_RATE:-50}"
BEFORE="${BEFORE:-5}"
AFTER="${AFTER:-0}"
MODES="${MODES:-off on}"
RETRY_MS="${RETRY_MS:-200}"
CATCHUP_TIMEOUT="${CATCHUP_TIMEOUT:-900}"
RESULT="${RESULT:-$here/results/catchup.json}"
JWT_SECRET="realtide-bench-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export JWT_SECRET

work="$(mktemp -d /tmp/realtide-catchup.XXXXXX)"
pg_dir=""

# The server of the current run, whichever start wrote it (see start.sh below).
server_pid() { cat "$work/server.pid" 2>/dev/null || true; }

cleanup() {
  local pid
  pid="$(server_pid)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if [ -n "$pg_dir" ]; then "$root/tests/pg/cluster.sh" stop "$pg_dir" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building release binaries" >&2
cargo build --release -q -p realtide-server -p realtide-loadgen
server_bin="$root/target/release/realtide"
loadgen_bin="$root/target/release/realtide-loadgen"

echo "== starting PostgreSQL" >&2
"$root/tests/pg/cluster.sh" start >"$work/pg.env"
DB_URL="$(sed -n 's/^DB_URL=//p' "$work/pg.env")"
pg_dir="$(sed -n 's/^PG_DIR=//p' "$work/pg.env")"
export DB_URL
pg_version="$(psql -X -A -t "$DB_URL" -c 'show server_version' 2>/dev/null || echo unknown)"
pg_pid="$(head -1 "$pg_dir/data/postmaster.pid")"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"

# start.sh <log>: starts realtide on $port (stdout and stderr to <log>), waits until it
# listens, records and prints its pid. The server is left orphaned on purpose (whoever runs
# this, the bench or the load generator, does not wait for it).
# stop.sh: SIGTERM to the recorded server, then waits for it to exit (60 s, then SIGKILL and
# failure).
write_hooks() {
  local slot="$1" changes="$2"
  cat >"$work/start.sh" <<EOF
#!/bin/sh
set -eu
log="\$1"
PORT=$port HOST=127.0.0.1 DB_URL='$DB_URL' JWT_SECRET='$JWT_SECRET' SLOT_NAME='$slot' \\
  CHANGES_DIR='$changes' DB_POOL_SIZE='${DB_POOL_SIZE:-4}' RUST_LOG='${SERVER_RUST_LOG:-warn}' \\
  nohup '$server_bin' >"\$log" 2>&1 </dev/null &
pid=\$!
echo "\$pid" >'$work/server.pid'
i=0
while ! grep -q '^realtide listening on 127.0.0.1:$port\$' "\$log" 2>/dev/null; do
  if ! kill -0 "\$pid" 2>/dev/null; then cat "\$log" >&2; echo "realtide exited" >&2; exit 1; fi
  i=\$((i + 1))
  [ "\$i" -lt 600 ] || { echo "realtide did not listen within 60 s" >&2; exit 1; }
  sleep 0.1
done
echo "\$pid"
EOF
  cat >"$work/stop.sh" <<EOF
#!/bin/sh
set -eu
pid="\$(cat '$work/server.pid')"
kill -TERM "\$pid"
i=0
# Gone, or a zombie nobody reaped yet.
while [ -e "/proc/\$pid" ] && [ "\$(awk '{print \$3}' "/proc/\$pid/stat" 2>/dev/null)" != Z ]; do
  i=\$((i + 1))
  if [ "\$i" -ge 600 ]; then kill -9 "\$pid" 2>/dev/null || true; echo "realtide did not stop within 60 s" >&2; exit 1; fi
  sleep 0.1
done
EOF
  chmod +x "$work/start.sh" "$work/stop.sh"
}

runs=()
run_one() {
  local mode="$1"
  local name="catchup-rls-$mode" slot="catchup_$mode" changes="$work/changes-$mode"
  local out="$work/$name.json" tlog="$work/$name.time"
  echo "== $name: $USERS users, outage ${OUTAGE}s at $RATE inserts/s, rls $mode" >&2
  mkdir -p "$changes"
  write_hooks "$slot" "$changes"
  local pid load0 load1 rc=0
  pid="$("$work/start.sh" "$work/$name.server-1.log")"
  # Give the replication task a moment to create and attach to the slot.
  sleep 1
  load0="$(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -v -o "$tlog" "$loadgen_bin" \
    --server-url "ws://127.0.0.1:$port/socket/websocket" --secret "$JWT_SECRET" \
    --output "$out" --label "$name" --max-runtime $((CATCHUP_TIMEOUT + OUTAGE + 600)) \
    catch-up --users "$USERS" --teams "$TEAMS" --rls "$mode" --rate "$RATE" --outage "$OUTAGE" \
    --live-rate "$LIVE_RATE" --before "$BEFORE" --after "$AFTER" --retry-ms "$RETRY_MS" \
    --catchup-timeout "$CATCHUP_TIMEOUT" --db-url "$DB_URL" \
    --server-pid "$pid" --pg-pid "$pg_pid" \
    --stop-cmd "$work/stop.sh" --start-cmd "$work/start.sh $work/$name.server-2.log" || rc=$?
  load1="$(cut -d' ' -f1-3 /proc/loadavg)"
  "$work/stop.sh" || true
  rm -f "$work/server.pid"
  psql -X -q "$DB_URL" -c "select pg_drop_replication_slot('$slot')" >/dev/null 2>&1 || true
  local logs=("$work/$name".server-*.log)
  echo "   server log warnings/errors:" >&2
  grep -h -E 'WARN|ERROR' "${logs[@]}" 2>/dev/null | head -20 | sed 's/^/     /' >&2 || true
  if [ ! -s "$out" ]; then
    echo "loadgen failed (exit $rc); server log tails:" >&2
    tail -n 20 "${logs[@]}" >&2 || true
    return
  fi
  local warn err lines lg_user lg_sys lg_rss
  warn="$(cat "${logs[@]}" | grep -c 'WARN' || true)"
  err="$(cat "${logs[@]}" | grep -c 'ERROR' || true)"
  warn="${warn:-0}" err="${err:-0}"
  lines="$({ grep -h -E 'WARN|ERROR' "${logs[@]}" || true; } | head -50 | jq -R . | jq -s .)"
  lg_user="$(awk -F': ' '/User time/ {print $2}' "$tlog")"
  lg_sys="$(awk -F': ' '/System time/ {print $2}' "$tlog")"
  lg_rss="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tlog")"
  jq --arg exit "$rc" --arg load0 "$load0" --arg load1 "$load1" \
     --argjson warn "${warn:-0}" --argjson err "${err:-0}" --argjson lines "$lines" \
     --argjson lg_cpu "$(echo "$lg_user + $lg_sys" | bc -l)" --argjson lg_rss "${lg_rss:-0}" \
     '. + {loadgen_exit: ($exit | tonumber),
           loadavg: {before: $load0, after: $load1},
           server_log: {warn: $warn, error: $err, lines: $lines},
           loadgen_process: {cpu_s: $lg_cpu, peak_rss_kb: $lg_rss}}' "$out" >"$out.tmp"
  mv "$out.tmp" "$out"
  jq -r '"   -> catch-up: \(.catchup.deliveries) deliveries, all rows at \(.catchup.time_to_all_s) s after the restart, \(.catchup.per_s_from_restart)/s (\(.catchup.per_s_while_delivering)/s while delivering); missing \(.deliveries.missing), duplicates \(.deliveries.duplicates), out of order \(.deliveries.out_of_order), missed notices \(.deliveries.missed_notices); server cpu \(.server.cpu_s) s, peak rss \(.server.peak_rss_kb) kB"' "$out" >&2
  runs+=("$out")
}

for mode in $MODES; do run_one "$mode"; done

[ "${#runs[@]}" -gt 0 ] || { echo "no run produced a result" >&2; exit 1; }
mkdir -p "$(dirname "$RESULT")"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git -C "$root" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | head -1)"
[ -n "$dirty" ] && commit="$commit+dirty"
jq -s --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg commit "$commit" \
   --arg pg "$pg_version" --arg quick "$quick" \
   --arg os "$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown}")" \
   '{benchmark: "catchup", date: $date, commit: $commit, quick: ($quick == "1"),
     postgres: $pg, os: $os, machine: (.[0].machine // null), runs: .}' \
   "${runs[@]}" >"$RESULT"
echo "== wrote $RESULT" >&2
