#!/usr/bin/env bash
# Fuzzes the realtide-protocol decoders (target decode_frame) with libFuzzer via cargo-fuzz.
#
#   fuzz/run.sh [SECONDS]        default 120
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address); on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them. New inputs go to
# fuzz/corpus/decode_frame (gitignored), crashes to fuzz/artifacts/decode_frame; the committed
# seeds in fuzz/seeds/decode_frame (regenerate: python3 fuzz/gen_seeds.py) are read, not written.
#
# Reproduce a crash: RUSTC_BOOTSTRAP=1 cargo fuzz run decode_frame fuzz/artifacts/decode_frame/<file>
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECONDS_TO_RUN="${1:-120}"
mkdir -p corpus/decode_frame
export RUSTC_BOOTSTRAP=1
exec cargo fuzz run decode_frame corpus/decode_frame seeds/decode_frame -- \
  -dict=decode_frame.dict \
  -max_len=65536 \
  -timeout=10 \
  -rss_limit_mb=4096 \
  -print_final_stats=1 \
  -max_total_time="$SECONDS_TO_RUN"
