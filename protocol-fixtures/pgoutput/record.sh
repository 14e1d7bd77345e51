#!/usr/bin/env bash
# Records raw pgoutput messages (protocol version 1) from a throwaway PostgreSQL 15.
#
# For each scenarios/<name>.setup.sql + <name>.sql pair: run the setup (not recorded),
# create a logical slot, run <name>.sql, then peek the slot with
# pg_logical_slot_peek_binary_changes(..., 'proto_version','1', 'publication_names','pub',
# 'messages','true') and write every message as one hex line into <name>.hex.
# The <name>.sql next to the .hex is a copy of the statements that produced it.
#
# Usage: protocol-fixtures/pgoutput/record.sh   (as root: PostgreSQL runs as `postgres`)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
[ -x "$PGBIN/postgres" ] || { echo "PostgreSQL 15 not found in $PGBIN" >&2; exit 1; }

WORK="$(mktemp -d /tmp/realtide-pgrec.XXXXXX)"
if [ "$(id -u)" = 0 ]; then
  chown postgres "$WORK"
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w \
  -o "-p $PORT -k $WORK -c listen_addresses='' -c wal_level=logical -c max_replication_slots=20 -c fsync=off -c TimeZone=UTC" \
  start >/dev/null

psql_q() { as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d postgres "$@"; }

for setup in "$HERE"/scenarios/*.setup.sql; do
  name="$(basename "$setup" .setup.sql)"
  body="$HERE/scenarios/$name.sql"
  echo "recording $name"
  psql_q -c "DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public; DROP PUBLICATION IF EXISTS pub;" 2>/dev/null
  psql_q <"$setup"
  psql_q -c "CREATE PUBLICATION pub FOR ALL TABLES;" \
         -c "SELECT 1 FROM pg_create_logical_replication_slot('rec', 'pgoutput');" >/dev/null
  psql_q <"$body"
  psql_q -A -t -c "SELECT encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes('rec', NULL, NULL,
      'proto_version', '1', 'publication_names', 'pub', 'messages', 'true')" >"$HERE/$name.hex"
  psql_q -c "SELECT pg_drop_replication_slot('rec');" >/dev/null
  { echo "-- setup (not recorded)"; cat "$setup"; echo; echo "-- recorded statements"; cat "$body"; } >"$HERE/$name.sql"
  echo "  $(wc -l <"$HERE/$name.hex") messages"
done
