#!/usr/bin/env bash
# The warm start from the upstream tasks, as the product makes it: for each unseen task, each seed and k = 16 per label
# or the whole training set, `tune --init upstream` chooses the upstream code that scores best (macro-F1, then
# accuracy) on the task's training examples and tunes z + head from it with `tune`'s defaults, where quality.sh's
# z + head row starts from N(0, 0.02²). `python3 scripts/lib/warm_start_summary.py` sets the lines against quality.sh's
# z + head and random rows of the same data and seed, and against the guarded start that keeps the better on dev.
#
#   [WARM_SHOTS=16|full] [WARM_SEEDS="1 2 3"] scripts/screen-warm-start.sh DATA_DIR [TASK...]
#
# TASK: unseen tasks [default: all 5]. WARM_SHOTS: k = 16 per label (the default) or the whole training set, tuned as
# quality.sh tunes it (dev evaluations and the code's choice on the first 300 examples: --eval-limit 300). One line per
# (task, shots, seed) (WARM_SEEDS, default 1; seed by seed) in docs/results/screen-warm-start-train.jsonl ({task,
# shots, seed, source, source_train, det, dev, test, seconds}); one with a line is skipped, and a cut-off tune resumes
# from its checkpoint. For the record, scripts/score-upstream-codes.sh first scores every upstream task's stage-0
# solution on the task's training and dev examples: how far a choice on that many examples can be trusted. Until
# 2026-12-01 (thirteenth session) the code was chosen on dev; those lines are in docs/results/screen-warm-start.jsonl.
set -euo pipefail
shopt -s inherit_errexit  # a failed eval inside $(...) stops the script
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/screen-warm-start.sh DATA_DIR [TASK...]}
shift
. scripts/lib/long-run.sh
tasks=${*:-$UNSEEN_TASKS}
shots=${WARM_SHOTS:-16}
seeds=${WARM_SEEDS:-1}
case $shots in
  16) draw=(--shots 16) ;;
  full) draw=(--eval-limit 300) ;;
  *) echo "WARM_SHOTS: $shots is not one of 16 full" >&2; exit 2 ;;
esac
for seed in $seeds; do
  case $seed in 1|2|3) ;; *) echo "WARM_SEEDS: $seed is not one of 1 2 3" >&2; exit 2 ;; esac
done
runs=runs/screen-warm-start
own_copies "$runs"
bin=("$runs/deltaspace" --config "$runs/deltaspace.toml")
common=(--model "$runs/model")
subspace=models/all-MiniLM-L6-v2/subspaces/default.safetensors
out=docs/results/screen-warm-start-train.jsonl
touch "$out"

# warm TASK SEED: tunes TASK from the upstream code tune chooses on its training examples (drawn with SEED at k = 16).
warm() {
  local t=$1 seed=$2 started line checkpoint=$runs/$t-$shots-$seed.checkpoint.safetensors
  grep -q "\"task\":\"$t\",\"shots\":\"$shots\",\"seed\":$seed," "$out" && return
  scripts/score-upstream-codes.sh "$data" "$shots" "$seed" "$t"
  echo "== $t shots=$shots seed $seed: tune --init upstream ($(date -u +%FT%TZ))"
  started=$SECONDS
  line=$("${bin[@]}" tune "${common[@]}" --subspace "$subspace" --data "$data/$t" "${draw[@]}" --seed "$seed" \
    --init upstream --checkpoint "$checkpoint" --out "$runs/$t-$shots-$seed.json" | tail -1)
  python3 -c 'import json, sys
out = json.loads(sys.argv[1])
print(json.dumps({"task": sys.argv[2], "shots": sys.argv[5], "seed": int(sys.argv[4]),
  "source": out["start"].removeprefix("upstream:"), "source_train": out["upstream_train"]["accuracy"],
  "det": out["det"], "dev": out["dev"], "test": out["test"], "seconds": int(sys.argv[3])},
  separators=(",", ":")))' "$line" "$t" "$((SECONDS - started))" "$seed" "$shots" >> "$out"
  rm -f "$checkpoint"
}

for seed in $seeds; do
  for t in $tasks; do warm "$t" "$seed"; done
done
