#!/usr/bin/env bash
# A screen of stage 2's schedule on the whole training sets (issue 10): does z + head stop too early there?
# quality.sh's z + head on the whole training sets (tune's defaults until 2026-12-01: at most 500 steps, stopping
# after 4 dev evaluations of 25 steps without improvement) trailed z alone tuned through Adapter for all 500 steps
# by the paper's pipeline (74.5 against 77.0 mean test). This runs z + head (prototypes) in the default subspace,
# one task and one DET at a time, seed 1, as quality.sh does (dev evaluations on 300 examples), but without early
# stopping (--patience 0) for SCREEN_STEPS steps [default 1000], and traces dev accuracy on those 300 examples
# every 25 steps.
# From the trace, early stopping can be replayed (scripts/replay_patience.py): where it stops, what dev it keeps.
# SCREEN_SHOTS=k does the same with k examples per label of train and of dev (quality.sh's few-shot rows: the whole
# k-shot dev set is evaluated and traced). SCREEN_SPACE=original asks the same of the DETs in their original space,
# the baselines (`train det` as stage 0 and quality.sh run it: lr 3e-3, 16 rows a step; SCREEN_STEPS default 1500,
# stage 0's most), into docs/results/screen-schedule-original.jsonl and docs/results/screen-schedule-trace-original*.
#
#   scripts/screen-schedule.sh DATA_DIR DET [TASK...]    # default tasks: the unseen ones
#
# Lines: docs/results/screen-schedule.jsonl, one per (task, det, shots, steps): the best dev z over the whole horizon
# with its whole dev and test scores; the traces: docs/results/screen-schedule-trace.jsonl (full) and
# docs/results/screen-schedule-trace-k<k>.jsonl. Resumable: a (task, det, shots, steps) with a line is not run
# again, and a run cut off resumes from its checkpoint (its trace then restarts at the resumed step, and its
# seconds count from there). Two of it can share the work (one per core): each unit holds a lock in
# runs/screen-schedule/locks/ and the other skips it. DELTASPACE_RUNTIME_INTRA_THREADS sets ONNX Runtime's threads.
#
#   python3 scripts/replay_patience.py docs/results/screen-schedule-trace.jsonl    # the patience table (or -k16)
#   python3 scripts/replay_patience.py docs/results/screen-schedule-trace-original.jsonl --horizons 500 1000 1500
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/screen-schedule.sh DATA_DIR DET [TASK...]}
det=${2:?usage: scripts/screen-schedule.sh DATA_DIR DET [TASK...]}
shift 2
. scripts/lib/long-run.sh
tasks=${*:-$UNSEEN_TASKS}
case $det in lora|adapter|prefix) ;; *) echo "DET: \"$det\" is not one of: lora adapter prefix" >&2; exit 2 ;; esac
space=${SCREEN_SPACE:-subspace}
case $space in
  subspace) suffix='' steps=${SCREEN_STEPS:-1000} ;;
  original) suffix=-original steps=${SCREEN_STEPS:-1500} ;;
  *) echo "SCREEN_SPACE: \"$space\" is not one of: subspace original" >&2; exit 2 ;;
esac
shots=${SCREEN_SHOTS:-full}
few=(--eval-limit 300 --trace-limit 300) trace=docs/results/screen-schedule-trace$suffix.jsonl
[ "$shots" = full ] || few=(--shots "$shots") trace=docs/results/screen-schedule-trace$suffix-k$shots.jsonl
runs=runs/screen-schedule
mkdir -p "$runs/locks"
own_copies "$runs"
bin=("$runs/deltaspace" --config "$runs/deltaspace.toml")
out=docs/results/screen-schedule$suffix.jsonl
touch "$out"
# screened TASK: whether TASK's line (this det, shots and steps) is in the results.
screened() { grep -q "\"task\":\"$1\",\"det\":\"$det\",\"shots\":\"$shots\",\"steps\":$steps," "$out"; }
for t in $tasks; do
  screened "$t" && continue
  unit=$t-$det$suffix-$shots-$steps
  lock=$runs/locks/$unit
  claim "$lock" || { echo "== $t $det $space shots=$shots: another screen-schedule.sh runs it"; continue; }
  if screened "$t"; then release "$lock"; continue; fi  # finished by another meanwhile
  checkpoint=$runs/$unit.checkpoint.safetensors
  started=$SECONDS
  echo "== $t $det $space shots=$shots steps=$steps: $(date -u +%FT%TZ)"
  common=(--model "$runs/model" --data "$data/$t" --seed 1 --det "$det" --steps "$steps" --patience 0 "${few[@]}"
    --trace "$trace" --trace-split dev --checkpoint "$checkpoint")
  case $space in
    subspace) line=$("${bin[@]}" tune "${common[@]}" --head prototypes --init normal --out "$runs/$unit.json" | tail -1) ;;
    original) line=$("${bin[@]}" train det "${common[@]}" --lr 3e-3 --eval-every 25 \
      --out "$runs/$unit.safetensors" | tail -1) ;;
  esac
  python3 -c 'import json, sys
out = json.loads(sys.argv[1])
head = "prototypes" if sys.argv[7] == "subspace" else None
print(json.dumps({"task": sys.argv[2], "det": sys.argv[3], "shots": sys.argv[4], "steps": int(sys.argv[5]),
  "patience": 0, "seed": 1, "head": head, "dev": out.get("dev"), "test": out.get("test"),
  "seconds": int(sys.argv[6])}, separators=(",", ":")))' "$line" "$t" "$det" "$shots" "$steps" \
  "$((SECONDS - started))" "$space" >> "$out"
  rm -f "$checkpoint"
  release "$lock"
done
