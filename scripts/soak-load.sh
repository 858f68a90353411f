#!/usr/bin/env bash
# Load soak (docs/RELIABILITY.md), loopback only: the release `deltaspace serve` on the tiny
# model, saturated for SECONDS (default 600) by closed-loop clients (fewer than the queue holds)
# sending predictions and embeddings of 6 tasks over 3 DETs while a writer replaces tasks; then
# bursts of 8 x queue requests at once against a queue of 4; then SIGTERM under load. It fails on
# any error, wrong answer, refused request during saturation, queue growth past its bound, memory
# growth over 20% (first vs last tenth of the run), or an answer the server sent that no client got.
# It prints throughput, p50/p99/max latency, RSS over time, and the shutdown's tally.
#   scripts/soak-load.sh [SECONDS] [CLIENTS]
#   DELTASPACE_TEST_BIN=target/debug/deltaspace scripts/soak-load.sh 60   # skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
clients="${2:-16}"
scripts/setup-ort.sh
if [ -z "${DELTASPACE_TEST_BIN:-}" ]; then
  nice -n 19 cargo build --release --locked --bin deltaspace
  export DELTASPACE_TEST_BIN="$PWD/target/release/deltaspace"
fi
echo "load soak: $seconds s, $clients clients, server $DELTASPACE_TEST_BIN, $(nproc) cores, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" >&2
DELTASPACE_LOAD_SECONDS="$seconds" DELTASPACE_LOAD_CLIENTS="$clients" \
  nice -n 19 cargo test --locked --test it -- reliability::load --nocapture
