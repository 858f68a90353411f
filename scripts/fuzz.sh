#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/, docs/RELIABILITY.md) for SECONDS each (default 600), then
# reduces each corpus to the inputs that keep every coverage edge, so fuzz/corpus/<target> stays
# small enough to commit. Needs `cargo install cargo-fuzz`; on a stable toolchain
# RUSTC_BOOTSTRAP=1 unlocks the -Z flags libFuzzer's instrumentation needs.
# Crashes land in fuzz/artifacts/<target>/ (git-ignored): fix, then copy the input into the
# corpus so `cargo test` (tests/it/reliability/fuzz_corpus.rs) keeps it fixed.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(request_decoding task_validation)
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
  echo "fuzzing $target for $seconds s, $(date -u +%FT%TZ)" >&2
  nice -n 19 cargo fuzz run -s none "$target" -- -max_total_time="$seconds" -max_len=4096 -timeout=10
  reduced=$(mktemp -d)
  nice -n 19 "target/$(rustc -vV | sed -n 's/^host: //p')/release/$target" \
    -set_cover_merge=1 -use_counters=0 "$reduced" "corpus/$target"
  rm -rf "corpus/$target"
  mv "$reduced" "corpus/$target"
  echo "$target: $(ls "corpus/$target" | wc -l) corpus inputs kept" >&2
done
