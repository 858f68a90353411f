#!/usr/bin/env bash
# The warm start from the upstream tasks, as the product makes it: for each unseen task, each seed and k = 16 per label
# or the whole training set, z + head is tuned with `tune`'s defaults from an upstream task's code, where quality.sh's
# z + head row starts from N(0, 0.02²). Which code, WARM_CHOICE says:
#   train   (the default) the code that scores best (macro-F1, then accuracy, the first of equals in the subspace's
#           order) on the task's training examples before any step, as scripts/score-upstream-codes.sh scores them
#           (`tune --init upstream` chose so until 2026-12-01, fourteenth session);
#   labels  the upstream task whose label descriptions are nearest to the task's (the first of its "labels" line in
#           docs/results/task-similarity.jsonl, export/task_similarity.py's), which `tune --init upstream` now
#           chooses: a choice that sees no labelled example, so no draw.
# Either way the code is passed by name (`tune --init upstream:NAME`). Since 2026-12-01 (fifteenth session) the
# labels' choice is quality.sh's "warm" row (`tune --init upstream`, which chooses the same codes), and the labels
# lines of this screen were copied into it; `deltaspace report --quality` derives the guarded start from it.
# `python3 scripts/lib/warm_start_summary.py [LINES]` sets the lines against quality.sh's z + head and random rows of
# the same data and seed, and against the guarded start that keeps the better on dev.
#
#   [WARM_CHOICE=train|labels] [WARM_SHOTS=16|full] [WARM_SEEDS="1 2 3"] scripts/screen-warm-start.sh DATA_DIR [TASK...]
#
# TASK: unseen tasks [default: all 5]. WARM_SHOTS: k = 16 per label (the default) or the whole training set, tuned as
# quality.sh tunes it (dev evaluations, and WARM_CHOICE=train's scores, on the first 300 examples). One line per
# (task, shots, seed) (WARM_SEEDS, default 1; seed by seed) in docs/results/screen-warm-start-train.jsonl or, for
# WARM_CHOICE=labels, docs/results/screen-warm-start-labels.jsonl ({task, shots, seed, source, det, dev, test,
# seconds}; the train lines before 2026-12-01 also give source_train, the code's training accuracy); one with a line
# is skipped, and a cut-off tune resumes from its checkpoint. For the
# record, WARM_CHOICE=train first scores every upstream task's stage-0 solution on the task's training and dev
# examples (scripts/score-upstream-codes.sh): how far a choice on that many examples can be trusted. Until 2026-12-01
# (thirteenth session) the code was chosen on dev; those lines are in docs/results/screen-warm-start.jsonl.
set -euo pipefail
shopt -s inherit_errexit  # a failed eval inside $(...) stops the script
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/screen-warm-start.sh DATA_DIR [TASK...]}
shift
. scripts/lib/long-run.sh
tasks=${*:-$UNSEEN_TASKS}
shots=${WARM_SHOTS:-16}
seeds=${WARM_SEEDS:-1}
choice=${WARM_CHOICE:-train}
case $choice in
  train|labels) ;;
  *) echo "WARM_CHOICE: $choice is not one of train labels" >&2; exit 2 ;;
esac
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
out=docs/results/screen-warm-start-$choice.jsonl
similarity=docs/results/task-similarity.jsonl
touch "$out"

# init TASK SEED: tune's --init for TASK, per WARM_CHOICE (scoring the codes first for the record).
init() {
  case $choice in
    train)
      scripts/score-upstream-codes.sh "$data" "$shots" "$2" "$1" >&2
      PYTHONPATH=scripts/lib python3 -c 'import json, sys
from warm_start_summary import best
scores = {}
for line in open("docs/results/screen-warm-start-choice.jsonl"):
    line = json.loads(line)
    if (line["unseen"], line["shots"], str(line["seed"]), line["split"]) == (*sys.argv[1:4], "train"):
        scores[line["source"]] = line
print("upstream:" + best(scores))' "$1" "$shots" "$2" ;;
    labels)
      python3 -c 'import json, sys
for line in open(sys.argv[1]):
    line = json.loads(line)
    if line["task"] == sys.argv[2] and line["kind"] == "labels":
        print("upstream:" + line["nearest"][0][0])
        break
else:
    sys.exit(f"{sys.argv[1]} has no labels line for {sys.argv[2]}: run export/task_similarity.py")' \
        "$similarity" "$1" ;;
  esac
}

# warm TASK SEED: tunes TASK from the upstream code WARM_CHOICE chooses (at k = 16, on the draw of SEED).
warm() {
  local t=$1 seed=$2 started line start checkpoint=$runs/$choice-$t-$shots-$seed.checkpoint.safetensors
  grep -q "\"task\":\"$t\",\"shots\":\"$shots\",\"seed\":$seed," "$out" && return
  start=$(init "$t" "$seed")
  echo "== $t shots=$shots seed $seed: tune --init $start ($(date -u +%FT%TZ))"
  started=$SECONDS
  line=$("${bin[@]}" tune "${common[@]}" --subspace "$subspace" --data "$data/$t" "${draw[@]}" --seed "$seed" \
    --init "$start" --checkpoint "$checkpoint" --out "$runs/$choice-$t-$shots-$seed.json" | tail -1)
  python3 -c 'import json, sys
out = json.loads(sys.argv[1])
line = {"task": sys.argv[2], "shots": sys.argv[5], "seed": int(sys.argv[4]),
  "source": out["start"].removeprefix("upstream:")}
line.update({"det": out["det"], "dev": out["dev"], "test": out["test"], "seconds": int(sys.argv[3])})
print(json.dumps(line, separators=(",", ":")))' "$line" "$t" "$((SECONDS - started))" "$seed" "$shots" >> "$out"
  rm -f "$checkpoint"
}

for seed in $seeds; do
  for t in $tasks; do warm "$t" "$seed"; done
done
