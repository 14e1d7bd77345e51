#!/usr/bin/env bash
# Writes one seed file per recorded pgoutput message: seeds/decode_pgoutput/<scenario>-<line>-<tag>
# and the same message wrapped in an XLogData header (…-w).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FIX="$HERE/../../../protocol-fixtures/pgoutput"
OUT="$HERE/seeds/decode_pgoutput"
rm -rf "$OUT" && mkdir -p "$OUT"
for f in "$FIX"/*.hex; do
  name="$(basename "$f" .hex)"
  n=0
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    n=$((n + 1))
    tag="$(printf '%s' "${line:0:2}" | xxd -r -p)"
    printf '%s' "$line" | xxd -r -p >"$OUT/$name-$n-$tag"
    { printf '77000000000100002800000000010000800000000000000001'; printf '%s' "$line"; } | xxd -r -p >"$OUT/$name-$n-$tag-w"
  done <"$f"
done
ls "$OUT" | wc -l
