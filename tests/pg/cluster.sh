#!/usr/bin/env bash
# A throwaway PostgreSQL for tests: `cluster.sh start` initdb's a cluster in a new temporary
# directory with wal_level=logical on a free port (as the `postgres` OS user when run as root),
# loads supabase.sql, and prints two lines:
#   DB_URL=postgres://postgres@127.0.0.1:<port>/postgres
#   PG_DIR=<directory>
# `cluster.sh stop <directory>` stops it and removes the directory.
# PG_EXTRA_OPTS adds server options after the defaults (e.g. `-c wal_level=replica`).
# For fault tests, on a cluster made by `start` (its server options are kept in <directory>/pg_opts):
#   `cluster.sh restart <directory>`     pg_ctl restart -m fast (same port and options; waits
#                                        PG_CTL_TIMEOUT seconds, default 60)
#   `cluster.sh kill <directory>`        SIGKILL the postmaster and wait until it is gone
#   `cluster.sh startagain <directory>`  start it again after `kill` (retries while orphaned
#                                        backends still hold the old shared memory)
set -euo pipefail

find_bindir() {
  # Symlinks on PATH (e.g. /usr/local/bin/pg_ctl) are resolved to the real bin directory.
  if command -v pg_ctl >/dev/null 2>&1; then dirname "$(readlink -f "$(command -v pg_ctl)")"; return; fi
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/pg_ctl" ]; then pg_config --bindir; return; fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return; }
  done
  echo "cluster.sh: no PostgreSQL binaries found (PATH, pg_config, /usr/lib/postgresql/*/bin)" >&2
  exit 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

case "${1:-}" in
  start)
    bin="$(find_bindir)"
    dir="$(mktemp -d /tmp/realtide-pg.XXXXXX)"
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1
    ssl_opts=""
    if [ "${PG_SSL:-0}" = 1 ]; then
      # TCP only over TLS, with a throwaway self-signed certificate for 127.0.0.1; the Unix
      # socket stays open for the tests' own setup connections.
      # A test CA (<dir>/ca.crt) signs the server certificate for 127.0.0.1.
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=realtide-test-ca -keyout "$dir/ca.key" -out "$dir/ca.crt" >/dev/null 2>&1
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj /CN=127.0.0.1 -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1
      printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/server.ext"
      openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 1 -extfile "$dir/server.ext" -out "$dir/server.crt" >/dev/null 2>&1
      chmod 600 "$dir/server.key"
      [ "$(id -u)" = 0 ] && chown postgres "$dir/server.key" "$dir/server.crt"
      cat >"$dir/data/pg_hba.conf" <<HBA
local all all trust
local replication all trust
hostssl all all 127.0.0.1/32 trust
hostssl replication all 127.0.0.1/32 trust
hostnossl all all 127.0.0.1/32 reject
hostnossl replication all 127.0.0.1/32 reject
HBA
      ssl_opts="-c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
    fi
    for attempt in 1 2 3 4 5; do
      port="$(free_port)"
      opts="-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c wal_level=logical \
         -c max_replication_slots=20 -c max_wal_senders=20 -c max_connections=300 -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c timezone=UTC $ssl_opts ${PG_EXTRA_OPTS:-}"
      if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start -o "$opts" >/dev/null 2>&1; then
        break
      fi
      port=""
    done
    [ -n "$port" ] || { echo "cluster.sh: postgres did not start (see $dir/server.log)" >&2; exit 1; }
    # Kept for `startagain` (pg_ctl start does not reuse the options of the previous start).
    printf '%s\n' "$opts" >"$dir/pg_opts"
    "$bin/psql" -q -X -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres -f "$here/../../crates/realtide-server/sql/supabase.sql" >/dev/null
    echo "DB_URL=postgres://postgres@127.0.0.1:$port/postgres"
    echo "PG_DIR=$dir"
    ;;
  stop)
    dir="${2:?usage: cluster.sh stop <directory>}"
    case "$dir" in /tmp/realtide-pg.*) ;; *) echo "cluster.sh: refusing to remove $dir" >&2; exit 1 ;; esac
    bin="$(find_bindir)"
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  restart)
    dir="${2:?usage: cluster.sh restart <directory>}"
    case "$dir" in /tmp/realtide-pg.*) ;; *) echo "cluster.sh: not a test cluster: $dir" >&2; exit 1 ;; esac
    bin="$(find_bindir)"
    # pg_ctl restart reuses the options of the running server (postmaster.opts); -l keeps the
    # new postmaster's output away from our stdout.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t "${PG_CTL_TIMEOUT:-60}" restart >/dev/null 2>&1 \
      || { echo "cluster.sh: pg_ctl restart -m fast did not complete within ${PG_CTL_TIMEOUT:-60} s (see $dir/server.log)" >&2; exit 1; }
    ;;
  kill)
    dir="${2:?usage: cluster.sh kill <directory>}"
    case "$dir" in /tmp/realtide-pg.*) ;; *) echo "cluster.sh: not a test cluster: $dir" >&2; exit 1 ;; esac
    pid="$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)"
    [ -n "$pid" ] || { echo "cluster.sh: no postmaster.pid in $dir/data" >&2; exit 1; }
    kill -KILL "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || exit 0
      sleep 0.1
    done
    echo "cluster.sh: postmaster $pid still alive after SIGKILL" >&2
    exit 1
    ;;
  startagain)
    dir="${2:?usage: cluster.sh startagain <directory>}"
    case "$dir" in /tmp/realtide-pg.*) ;; *) echo "cluster.sh: not a test cluster: $dir" >&2; exit 1 ;; esac
    [ -f "$dir/pg_opts" ] || { echo "cluster.sh: $dir/pg_opts missing (cluster not made by this script)" >&2; exit 1; }
    bin="$(find_bindir)"
    opts="$(cat "$dir/pg_opts")"
    # After a postmaster SIGKILL its backends exit on their own when they notice; until then
    # the old shared memory is in use and a new postmaster refuses to start.
    for _ in $(seq 1 60); do
      if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$opts" >/dev/null 2>&1; then
        exit 0
      fi
      sleep 0.5
    done
    echo "cluster.sh: postgres did not start again (see $dir/server.log)" >&2
    exit 1
    ;;
  *)
    echo "usage: cluster.sh start | stop <directory> | restart <directory> | kill <directory> | startagain <directory>" >&2
    exit 2
    ;;
esac
