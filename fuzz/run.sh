#!/usr/bin/env bash
# Fuzzes with libFuzzer via cargo-fuzz: decode_frame (the realtide-protocol decoders) or
# client_frames (the server's WebSocket frame reader, crates/realtide-server/src/ws/frames.rs).
#
#   fuzz/run.sh [SECONDS] [TARGET]        default 120 decode_frame
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
TARGET="${2:-decode_frame}"
mkdir -p "corpus/$TARGET"
export RUSTC_BOOTSTRAP=1
dict=()
[ -f "$TARGET.dict" ] && dict=(-dict="$TARGET.dict")
exec cargo fuzz run "$TARGET" "corpus/$TARGET" "seeds/$TARGET" -- \
  "${dict[@]}" \
  -max_len=65536 \
  -timeout=10 \
  -rss_limit_mb=4096 \
  -print_final_stats=1 \
  -max_total_time="$SECONDS_TO_RUN"
