#!/usr/bin/env bash
# Stage 0 to convergence: LoRA, Adapter and Prefix trained in their original space from the shared
# θ⁰, one task at a time, each (task, DET) until its dev accuracy stops improving (early stopping).
# The 17 upstream tasks give stage 1 its solutions; the 5 unseen tasks' solutions are the paper's
# denominators (relative performance) and are never shown to stage 1.
#
#   scripts/stage0.sh DATA_DIR [TASK...]    # DATA_DIR holds <task>/{train,dev,test}.jsonl + labels.json
#
# Compute accumulates across sessions: a finished task's three solutions (δ as f16, about 147 KB
# each) are copied to models/all-MiniLM-L6-v2/stage0/upstream/ or .../stage0/unseen/ (stage 1 reads
# only the first), which are committed, and their scores are
# appended to docs/results/stage0.jsonl. A task whose three solutions are there is skipped; a task
# that was interrupted resumes from its checkpoint under runs/stage0/, or from one parked under
# models/all-MiniLM-L6-v2/stage0/checkpoints/ (before a session ends, copy the running task's
# runs/stage0/TASK.checkpoint.safetensors there and commit it). Log: runs/stage0/log.txt.
#
# Budget per (task, DET): Adam at lr 3e-3, 16 training rows per step, dev accuracy on 300 dev
# examples every 25 steps, stop after 4 evaluations (100 steps) without improvement, at most
# 1,500 steps (24,000 rows, about 5 epochs of a 5,000-example task); the final dev and test scores
# use the whole splits (at most 1,000 each). Inputs are cut at 64 tokens.
#
# A long run uses its own copies of the binary, its configuration and the model directory, made at
# start, so that a rebuild, an edit or a re-export cannot swap them mid-run.
# DELTASPACE_RUNTIME_INTRA_THREADS sets the ONNX Runtime threads (give training one while something
# else builds on a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/stage0.sh DATA_DIR [TASK...]}
shift
model=models/all-MiniLM-L6-v2
committed=$model/stage0
results=docs/results/stage0.jsonl
runs=runs/stage0
. scripts/lib/long-run.sh
tasks=${*:-$UPSTREAM_TASKS $UNSEEN_TASKS}
mkdir -p "$runs" "$(dirname "$results")"
touch "$results"
exec > >(tee -a "$runs/log.txt") 2>&1

own_copies "$runs"
bin=("$runs/deltaspace" --config "$runs/deltaspace.toml")

# stage0_task TASK [wait]: trains TASK's three DETs unless their solutions are there. A task another stage0.sh is
# training goes to `held`, or with `wait`, waits for it (and then finds it done, or trains what it left).
held=()
stage0_task() {
  local task=$1 dir seconds started parked solution
  case " $UNSEEN_TASKS " in *" $task "*) dir=$committed/unseen ;; *) dir=$committed/upstream ;; esac
  mkdir -p "$dir"
  if solved "$dir" "$task"; then
    echo "== $task: done before"
    return
  fi
  # Two runs may share the machine (a task each); one task is trained by one of them at a time.
  if ! claim "$runs/$task.lock" "${2:-}"; then
    echo "== $task: running in another stage0.sh (pid $(cat "$runs/$task.lock")); back to it at the end"
    held+=("$task")
    return
  fi
  if solved "$dir" "$task"; then  # the run this one waited for finished it
    echo "== $task: done by another stage0.sh"
    release "$runs/$task.lock"
    return
  fi
  echo "== $task: $(date -u +%FT%TZ)"
  # A task a session left half-trained resumes from the checkpoint it committed (see below).
  parked=$committed/checkpoints/$task.checkpoint.safetensors
  if [ ! -f "$runs/$task.checkpoint.safetensors" ] && [ -f "$parked" ]; then
    cp "$parked" "$runs/$task.checkpoint.safetensors"
  fi
  started=$SECONDS
  "${bin[@]}" train det --model "$runs/model" --data "$data/$task" --det all \
    --steps 1500 --batch 16 --lr 3e-3 --eval-every 25 --eval-limit 300 --patience 4 \
    --f16 --checkpoint "$runs/$task.checkpoint.safetensors" --out "$runs/$task" > "$runs/$task.jsonl"
  seconds=$((SECONDS - started))
  # One line per (task, DET): the scores of the solution, with the wall time of the whole task. They replace
  # any the task has, and come before the solutions: "done before" is decided by the solutions, so a run cut
  # off between the two trains the task again rather than leaving it without lines (or with two sets).
  claim "$runs/results.lock" wait   # the other run rewrites the same file
  { grep -v -F "\"task\":\"$task\"," "$results" || true
    sed "s/}\$/,\"seconds\":$seconds,\"threads\":\"${DELTASPACE_RUNTIME_INTRA_THREADS:-all}\"}/" \
      "$runs/$task.jsonl"
  } > "$results.new"
  mv -f "$results.new" "$results"
  release "$runs/results.lock"
  # Each file whole (a copy, then a rename): a run cut off here leaves no truncated solution that the
  # next would take as done.
  for solution in "$runs/$task"/*.safetensors; do
    copy_if_changed "$solution" "$dir/${solution##*/}"
  done
  rm -f "$parked"
  release "$runs/$task.lock"
  echo "== $task: $seconds s"
}

# solved DIR TASK: whether TASK's three solutions are in DIR.
solved() {
  [ -f "$1/$2.lora.safetensors" ] && [ -f "$1/$2.adapter.safetensors" ] && [ -f "$1/$2.prefix.safetensors" ]
}

for task in $tasks; do
  stage0_task "$task"
done
# The tasks another run was training: this one ends only once every task it was asked for has its solutions, so a
# caller (scripts/pipeline.sh) never takes stage 0 as done while one is still training.
waiting=("${held[@]}") held=()
for task in "${waiting[@]}"; do
  stage0_task "$task" wait
done
if [ ${#held[@]} -gt 0 ]; then
  echo "stage0: unfinished: ${held[*]}" >&2
  exit 1
fi
