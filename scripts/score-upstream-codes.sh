#!/usr/bin/env bash
# Every upstream task's stage-0 solution (through LoRA) scored on an unseen task's training and dev examples before any
# step (the subspace's codes rebuild these solutions): what a choice on the training examples would take
# (scripts/screen-warm-start.sh's WARM_CHOICE=train; `tune --init upstream` chose so until 2026-12-01, fourteenth
# session), and how far a choice on that many examples can be trusted (the same code chosen on dev?).
#
#   scripts/score-upstream-codes.sh DATA_DIR SHOTS SEED TASK...
#
# SHOTS: k per label, drawn with SEED as tune --shots draws them, or "full": the first 300 examples of each split (tune
# --eval-limit 300 on a whole training set; SEED is then recorded only). Appends to
# docs/results/screen-warm-start-choice.jsonl ({unseen, shots, seed, source, split, accuracy, macro_f1, n, ...}), once
# per (task, shots, seed, split). `python3 scripts/lib/warm_start_summary.py` tabulates the choices.
set -euo pipefail
shopt -s inherit_errexit  # a failed eval inside $(...) stops the script
cd "$(dirname "$0")/.."
if [ $# -lt 4 ]; then
  echo "usage: scripts/score-upstream-codes.sh DATA_DIR SHOTS SEED TASK..." >&2
  exit 2
fi
data=$1 shots=$2 seed=$3
shift 3
. scripts/lib/long-run.sh
runs=runs/screen-warm-start
own_copies "$runs"
bin=("$runs/deltaspace" --config "$runs/deltaspace.toml")
solutions=models/all-MiniLM-L6-v2/stage0/upstream
choices=docs/results/screen-warm-start-choice.jsonl
case $seed in *[!0-9]*|'') echo "SEED: $seed is not a number" >&2; exit 2 ;; esac
case $shots in
  full) draw=(--limit 300) ;;
  *[!0-9]*|'') echo "SHOTS: $shots is neither a number nor full" >&2; exit 2 ;;
  *) draw=(--shots "$shots" --seed "$seed") ;;
esac
touch "$choices"
for t in "$@"; do
  for split in train dev; do
    grep -q "\"unseen\":\"$t\",\"shots\":\"$shots\",\"seed\":$seed,.*\"split\":\"$split\"" "$choices" && continue
    scores=$(for source in $UPSTREAM_TASKS; do
      "${bin[@]}" eval --model "$runs/model" --data "$data/$t" --solution "$solutions/$source.lora.safetensors" \
        --split "$split" "${draw[@]}" 2>> "$runs/eval.log" | tail -1 \
        | sed "s/^{/{\"unseen\":\"$t\",\"shots\":\"$shots\",\"seed\":$seed,\"source\":\"$source\",/"
    done)
    if [ "$(printf '%s\n' "$scores" | grep -c '"accuracy"')" -ne "$(echo $UPSTREAM_TASKS | wc -w)" ]; then
      echo "$t: not every upstream solution was scored on $split (see $runs/eval.log)" >&2
      exit 1
    fi
    printf '%s\n' "$scores" >> "$choices"
  done
done
