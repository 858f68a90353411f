#!/usr/bin/env bash
# scripts/pipeline.sh on both cores of a 2-core machine: two lanes in the background, each on one ONNX Runtime
# thread. Lane 1 runs the pipeline in order (its long steps are quality.sh's: the example tasks, then the matrix);
# lane 2 skips those, does the paper's tables, then joins lane 1 in the quality matrix (a second quality.sh: they
# share it run by run). A step runs in one lane only, and publishing waits for every step but the matrix
# (scripts/pipeline.sh's header).
#
#   scripts/pipeline-lanes.sh DATA_DIR [D]      # returns at once; logs: runs/pipeline-dD/lane{1,2}.out
#   scripts/pipeline-lanes.sh --stop [D]        # stops both lanes and their runs (they resume from checkpoints)
#
# Each lane is its own session (setsid), so --stop ends a lane's runs with it.
set -euo pipefail
cd "$(dirname "$0")/.."

# running PID: whether PID is still a lane: alive, leading its own process group, running the pipeline (a pid file
# outlives its lane, and the pid may have gone to another process since).
running() {
  [ -n "$1" ] && [ "$(ps -o pgid= -p "$1" 2>/dev/null | tr -d ' ')" = "$1" ] \
    && grep -qs pipeline.sh "/proc/$1/cmdline"
}
if [ "${1:-}" = --stop ]; then
  out=runs/pipeline-d${2:-1024}
  for lane in 1 2; do
    pid=$(cat "$out/lane$lane.pid" 2>/dev/null || true)
    if running "$pid"; then kill -- "-$pid" && echo "stopped lane $lane ($pid)"; fi
    rm -f "$out/lane$lane.pid"
  done
  exit 0
fi
data=${1:?usage: scripts/pipeline-lanes.sh DATA_DIR [D] | --stop [D]}
d=${2:-1024}
out=runs/pipeline-d$d
mkdir -p "$out"
for lane in 1 2; do
  if running "$(cat "$out/lane$lane.pid" 2>/dev/null || true)"; then
    echo "lane $lane is running ($(cat "$out/lane$lane.pid")); scripts/pipeline-lanes.sh --stop $d first" >&2
    exit 2
  fi
done
# start LANE COMMAND: runs COMMAND (bash) as a lane in its own session.
start() {
  DELTASPACE_RUNTIME_INTRA_THREADS=1 PIPELINE_LOG="$out/log-lane$1.txt" \
    setsid nohup bash -c "$2" > "$out/lane$1.out" 2>&1 < /dev/null &
  echo $! > "$out/lane$1.pid"
  echo "lane $1: pid $!, log $out/lane$1.out"
}
data=$(printf '%q' "$data")
start 1 "scripts/pipeline.sh $data $d"
sleep 5  # lane 1 claims its first step before lane 2 looks
# Lane 2 joins the matrix only when its pipeline succeeded (a stage 0 not finished stops both lanes, saying why).
start 2 "PIPELINE_SKIP='example-tasks example-tasks-warm quality' scripts/pipeline.sh $data $d && scripts/quality.sh $data $out/minilm-d$d.safetensors"
