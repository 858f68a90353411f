#!/usr/bin/env bash
# A warm start from the upstream tasks, the one thing a learned subspace offers that a random one cannot: for each
# unseen task at k = 16 per label and each seed, every upstream task's stage-0 solution (through LoRA) is scored on the
# task's k = 16 dev examples per label, and z + head is tuned with `tune`'s defaults from the code of the best one
# (macro-F1, then accuracy), where quality.sh's z + head row starts from N(0, 0.02²). Compare with the z + head and
# random rows at k = 16, seed 1, in docs/results/quality/minilm-d1024.jsonl. The scores the choice was made on go to
# docs/results/screen-warm-start-choice.jsonl.
#
#   [WARM_SEEDS="1 2 3"] scripts/screen-warm-start.sh DATA_DIR [TASK...]   # TASK: unseen tasks [default: all 5]
#
# Needs the codes: .venv-export/bin/python export/upstream_codes.py --subspace SUBSPACE --solutions
# models/all-MiniLM-L6-v2/stage0/upstream --data DATA_DIR --out runs/upstream-codes (this script runs it when they
# are missing). One line per task and seed (WARM_SEEDS, default 1; seed by seed) in
# docs/results/screen-warm-start.jsonl ({task, shots, seed, source, source_dev, det, dev, test, seconds}); a (task,
# seed) with a line is skipped, and a cut-off tune resumes from its checkpoint.
set -euo pipefail
shopt -s inherit_errexit  # a failed eval inside $(...) stops the script
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/screen-warm-start.sh DATA_DIR [TASK...]}
shift
. scripts/lib/long-run.sh
tasks=${*:-$UNSEEN_TASKS}
seeds=${WARM_SEEDS:-1}
for seed in $seeds; do
  case $seed in 1|2|3) ;; *) echo "WARM_SEEDS: $seed is not one of 1 2 3" >&2; exit 2 ;; esac
done
runs=runs/screen-warm-start
own_copies "$runs"
bin=("$runs/deltaspace" --config "$runs/deltaspace.toml")
common=(--model "$runs/model")
subspace=models/all-MiniLM-L6-v2/subspaces/default.safetensors
solutions=models/all-MiniLM-L6-v2/stage0/upstream
codes=runs/upstream-codes
out=docs/results/screen-warm-start.jsonl
choices=docs/results/screen-warm-start-choice.jsonl  # every upstream solution's k = 16 dev scores, per task
touch "$out"
[ -f "$codes/sst2.json" ] || .venv-export/bin/python export/upstream_codes.py --subspace "$subspace" \
  --solutions "$solutions" --data "$data" --out "$codes" > "$codes.jsonl"  # how much of each δ its code keeps

# warm TASK SEED: chooses TASK's upstream code on its k = 16 dev set drawn with SEED, and tunes from it.
warm() {
  local t=$1 seed=$2
  grep -q "\"task\":\"$t\",\"shots\":\"16\",\"seed\":$seed," "$out" && return
  echo "== $t seed $seed: choosing the upstream code on k = 16 dev ($(date -u +%FT%TZ))"
  scores=$(for source in $UPSTREAM_TASKS; do
    "${bin[@]}" eval "${common[@]}" --data "$data/$t" --solution "$solutions/$source.lora.safetensors" \
      --split dev --shots 16 --seed "$seed" 2>> "$runs/eval.log" | tail -1 | sed "s/^{/{\"source\":\"$source\",/"
  done)
  if [ "$(printf '%s\n' "$scores" | grep -c '"accuracy"')" -ne "$(echo $UPSTREAM_TASKS | wc -w)" ]; then
    echo "$t: not every upstream solution was scored (see $runs/eval.log)" >&2
    exit 1
  fi
  # A (task, seed) resumed after a cut has its scores in already (the same: they take no step).
  grep -q "\"unseen\":\"$t\",\"shots\":\"16\",\"seed\":$seed," "$choices" ||
    printf '%s\n' "$scores" | sed "s/^{/{\"unseen\":\"$t\",\"shots\":\"16\",\"seed\":$seed,/" >> "$choices"
  best=$(printf '%s\n' "$scores" | python3 -c 'import json, sys
lines = [json.loads(l) for l in sys.stdin if l.strip()]
best = max(lines, key=lambda l: (l["macro_f1"], l["accuracy"]))
print(best["source"], best["accuracy"])')
  local source source_dev started line checkpoint=$runs/$t-$seed.checkpoint.safetensors
  read -r source source_dev <<< "$best"
  echo "== $t seed $seed: from $source (dev $source_dev)"
  started=$SECONDS
  line=$("${bin[@]}" tune "${common[@]}" --subspace "$subspace" --data "$data/$t" --shots 16 --seed "$seed" \
    --init "$codes/$source.json" --checkpoint "$checkpoint" --out "$runs/$t-$seed.json" | tail -1)
  python3 -c 'import json, sys
out = json.loads(sys.argv[1])
print(json.dumps({"task": sys.argv[2], "shots": "16", "seed": int(sys.argv[6]), "source": sys.argv[3],
  "source_dev": float(sys.argv[4]), "det": out.get("det"), "dev": out.get("dev"), "test": out.get("test"),
  "seconds": int(sys.argv[5])}, separators=(",", ":")))' "$line" "$t" "$source" "$source_dev" \
    "$((SECONDS - started))" "$seed" >> "$out"
  rm -f "$checkpoint"
}

for seed in $seeds; do
  for t in $tasks; do warm "$t" "$seed"; done
done
