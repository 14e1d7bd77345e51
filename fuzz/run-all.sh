#!/usr/bin/env bash
# Runs every fuzz target one after the other for SECONDS each (default 600), appending
# libFuzzer's final statistics to fuzz/results.log, then minimizes each corpus into
# fuzz/corpus/<target> (committed).
#
#   fuzz/run-all.sh [SECONDS] [TARGET ...]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECONDS_EACH="${1:-600}"
shift || true
TARGETS=("$@")
[ "${#TARGETS[@]}" -eq 0 ] && TARGETS=(decode_frame client_frames binary_frame pgoutput filter jwt wsframe peer plain)
export RUSTC_BOOTSTRAP=1
for target in "${TARGETS[@]}"; do
  mkdir -p "corpus/$target" "work/$target"
  echo "== $target $(date -u +%FT%TZ) ${SECONDS_EACH}s" >> results.log
  dict=()
  [ -f "$target.dict" ] && dict=(-dict="$target.dict")
  cargo fuzz run "$target" "work/$target" "corpus/$target" "seeds/$target" -- \
    "${dict[@]}" -max_len=65536 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
    -max_total_time="$SECONDS_EACH" > "work/$target.log" 2>&1
  echo "exit=$?" >> results.log
  grep -E "^stat::|Done [0-9]+ runs|ERROR|panicked|SUMMARY|^#[0-9]+.*DONE" "work/$target.log" | tail -20 >> results.log
  # Keep a minimized corpus: only inputs that add coverage.
  cp -n "work/$target/." "corpus/$target/" 2>/dev/null || cp -r "work/$target/." "corpus/$target/"
  cargo fuzz cmin "$target" "corpus/$target" > "work/$target.cmin.log" 2>&1 || echo "cmin failed" >> results.log
  echo "corpus=$(ls "corpus/$target" | wc -l) files $(du -sh "corpus/$target" | cut -f1)" >> results.log
done
