#!/usr/bin/env bash
# HTTP end to end (benches/http.rs): the release `deltaspace serve` on MiniLM with 1, 100, 10k and 1M registered
# random-z tasks under closed-loop load on loopback; throughput, p50, p99 and resident memory per registered task,
# as ratios against the 1-task run of the same invocation. Writes docs/performance/http.md.
#   scripts/bench-http.sh [--counts 1,100,10000,1000000] [--seconds 20] [--clients 16] [--offline-batch 32]
# Needs the MiniLM export (scripts/run-main.sh makes it) and ONNX Runtime (scripts/setup-ort.sh). The tasks are in the
# default subspace (--subspace FILE for another; the page names it and its d). At d = 16 a run at the defaults took
# about 5 minutes on 2 cores (the 1M-task import and start-up most of it) and its 1M-task database about 700 MB; at
# the default d = 1,024 a z is about 10 KB of JSON in the database and 2 KB in memory, so 1M tasks want about 10 GB of
# disk and 2.5 GB of memory (--counts 1,100,10000 for a quick run). Plus the first release build.
# Work directories and logs stay in bench-out/http/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh
command="scripts/bench-http.sh $*"
out=bench-out/http
mkdir -p "$out" docs/performance
scripts/setup-ort.sh >/dev/null
if [ ! -f models/all-MiniLM-L6-v2/serve.onnx ]; then
  echo "models/all-MiniLM-L6-v2/serve.onnx is missing: run scripts/run-main.sh once (it exports the model)" >&2
  exit 2
fi
# Build first, so no compile runs beside the timings.
cargo build --quiet --release --locked --bin deltaspace
cargo bench --quiet --locked --bench http --no-run
load_before=$(load_average)
busy=$(busiest)
cargo bench --quiet --locked --bench http -- "$@" | tee "$out/result.txt"
load_after=$(load_average)
{
  echo "# HTTP end to end: throughput, latency and memory with 1 to 1M registered tasks"
  echo
  echo "Written by \`${command% }\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(revision)."
  echo "Machine: $(machine); ONNX Runtime" \
    "$(ort_library), CPU execution provider."
  echo "Load average (1, 5, 15 min) before: $load_before; after: $load_after. Busiest processes at the start: ${busy%; }."
  echo
  echo "What runs (benches/http.rs): for each count N, N tasks with random z (N(0, 1) per coordinate, in the subspace"
  echo "named above the table), DETs in turn, labels drawn from the example tasks' label sets, go into a fresh database"
  echo "through the code of"
  echo "\`deltaspace import\`; the release \`deltaspace serve\` (config/deltaspace.toml's batching defaults, seed tasks off)"
  echo "starts on it; closed-loop clients in the bench process send \`POST /v1/tasks/{random one of N}/predict\` with one"
  echo "real sentence each. Clients and server share the machine's cores. The baseline is N = 1 of the same run:"
  echo "\"×1 task\" columns are ratios against it, and bytes/task is (RSS_N − RSS_1) / (N − 1), idle after start-up"
  echo "and under load. The goal of issue #5 is ≤ 1 KB (1,024 bytes) per registered task."
  echo "After the 16-client load, one client alone loads the same server (latency at low load). Last, with every"
  echo "server stopped, the plain graph (no DET plug points) runs in the bench process on the same texts and ORT"
  echo "threads: batched offline (server overhead = req/s ÷ those texts/s; goal of issue #14 ≥ 0.85) and one text at"
  echo "a time (the low-load latency's baseline)."
  echo
  sed '/^{/d' "$out/result.txt"
  echo
  echo "Raw JSON lines (one per N, then the offline baseline):"
  echo
  echo '```'
  grep '^{' "$out/result.txt"
  echo '```'
} > docs/performance/http.md
echo "wrote docs/performance/http.md" >&2
