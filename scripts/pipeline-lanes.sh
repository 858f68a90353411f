#!/usr/bin/env bash
# scripts/pipeline.sh on both cores of a 2-core machine: two pipelines in the background, each on one ONNX Runtime
# thread. Lane 1 runs the pipeline in order (its long step is quality.sh); lane 2 skips quality and starts on the
# paper's tables. A step runs in one lane only, and publishing waits for every step (scripts/pipeline.sh's header).
#
#   scripts/pipeline-lanes.sh DATA_DIR [D]      # returns at once; logs: runs/pipeline-dD/lane{1,2}.out
#   scripts/pipeline-lanes.sh --stop [D]        # stops both lanes and their runs (they resume from checkpoints)
#
# Each lane is its own session (setsid), so --stop ends a lane's runs with it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --stop ]; then
  out=runs/pipeline-d${2:-1024}
  for lane in 1 2; do
    pid=$(cat "$out/lane$lane.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -- "-$pid" && echo "stopped lane $lane ($pid)"; fi
    rm -f "$out/lane$lane.pid"
  done
  exit 0
fi
data=${1:?usage: scripts/pipeline-lanes.sh DATA_DIR [D] | --stop [D]}
d=${2:-1024}
out=runs/pipeline-d$d
mkdir -p "$out"
for lane in 1 2; do
  if pid=$(cat "$out/lane$lane.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; then
    echo "lane $lane is running ($pid); scripts/pipeline-lanes.sh --stop $d first" >&2
    exit 2
  fi
done
start() {
  local lane=$1; shift
  env "$@" DELTASPACE_RUNTIME_INTRA_THREADS=1 PIPELINE_LOG="$out/log-lane$lane.txt" \
    setsid nohup scripts/pipeline.sh "$data" "$d" > "$out/lane$lane.out" 2>&1 < /dev/null &
  echo $! > "$out/lane$lane.pid"
  echo "lane $lane: pid $!, log $out/lane$lane.out"
}
start 1
sleep 5  # lane 1 claims its first step before lane 2 looks
start 2 PIPELINE_SKIP=quality
