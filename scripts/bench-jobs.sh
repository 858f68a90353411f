#!/usr/bin/env bash
# Tune jobs end to end (scripts/bench_jobs.py): time from POST /v1/tasks/{name}/tune to a served task for 16, 64
# and 256 training examples, with the job's test accuracy beside `deltaspace tune`'s on the same data and seed; and
# prediction latency p50/p99 at half the saturation throughput, with and without a tune job running (the goal of
# issue 11: p99 grows at most 1.5×). Writes docs/performance/jobs.md.
#   scripts/bench-jobs.sh TASK_DIR [--sizes 16,64,256] [--steps 100] [--load-seconds 30]
# TASK_DIR is a task in the data sets' layout (train/dev/test.jsonl and labels.json). Needs the MiniLM export
# (scripts/run-main.sh makes it). About 25 minutes on 2 cores at the defaults; run it on an otherwise idle machine
# (the page records the load average), or pause long jobs: kill -STOP / kill -CONT.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh
task=${1:?usage: scripts/bench-jobs.sh TASK_DIR [bench_jobs.py flags]}
shift
# The task by name, not by this machine's path: the page says what it held.
command="scripts/bench-jobs.sh DATA_DIR/$(basename "$task") $*"
out=bench-out/jobs
mkdir -p "$out" docs/performance
scripts/setup-ort.sh >/dev/null
if [ ! -f models/all-MiniLM-L6-v2/grad.onnx ]; then
  echo "models/all-MiniLM-L6-v2/grad.onnx is missing: run scripts/run-main.sh once (it exports the model)" >&2
  exit 2
fi
# Build first, so no compile runs beside the timings.
cargo build --quiet --release --locked --bin deltaspace
load_before=$(load_average)
busy=$(busiest)
python3 scripts/bench_jobs.py --data "$task" --json "$out/result.json" "$@" | tee "$out/result.md"
load_after=$(load_average)
{
  echo "# Tune jobs: time to a served task, and prediction latency while a job runs"
  echo
  echo "Written by \`${command% }\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(revision)."
  echo "Machine: $(machine); ONNX Runtime $(ort_library), CPU execution provider."
  echo "Load average (1, 5, 15 min) before: $load_before; after: $load_after. Busiest processes at the start: ${busy%; }."
  echo
  echo "What runs (scripts/bench_jobs.py): the release \`deltaspace serve\` on MiniLM (default subspace, seed tasks off)."
  echo "For each size, a tune job with the product's defaults (every DET, the prototypes head, early stopping) and the"
  echo "step budget below, given the training examples, 16 dev examples per label and the test examples; the clock runs"
  echo "from the POST to the job's \`succeeded\` (the task is then served). \`deltaspace tune\` then runs on the same files"
  echo "with the same seed and budget (and the job's 16 rows per encoder run). Then predictions of one text each: the"
  echo "saturation throughput from closed-loop clients, and half of it sent open-loop (latency counted from when each"
  echo "request was due), first with no job, then while a tune job trains (256 examples, no early stopping)."
  echo
  cat "$out/result.md"
  echo
  echo "Raw figures: \`$(cat "$out/result.json")\`"
} > docs/performance/jobs.md
echo "wrote docs/performance/jobs.md" >&2
