#!/usr/bin/env bash
# The default MiniLM pipeline of docs/RESULTS.md: stage 0 on the upstream tasks, stage 1 at several d,
# and on the unseen tasks the original-space DETs, subspace optimization, zero-shot transfer, both
# controls (frozen model, random subspace), the ablation over d, gradient vs CMA-ES, a landscape and
# the report. Every step writes its outputs under runs/ and is skipped when they exist, so the script
# resumes where it stopped; training steps also checkpoint. Logs: runs/pipeline/log.txt.
#
#   scripts/pipeline.sh DATA_DIR          # DATA_DIR holds <task>/{train,dev,test}.jsonl + labels.json
#
# Budgets below are sized for 2 CPU cores shared with other work (about two hours); on a GPU raise them.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/pipeline.sh DATA_DIR}
bin=${DELTASPACE_BIN:-target/release/deltaspace}
model=models/all-MiniLM-L6-v2
out=runs/pipeline
results=$out/results
upstream="sst2 sst5 subj agnews sarcasm tweet_hate tweet_sentiment tweet_emotion qnli cb"
unseen="mpqa rte mrpc tweet_offensive trec"
dims="4 8 16 32"
default_d=16
common=(--model "$model" --max-seq-len 64)
mkdir -p "$out/done" "$results/tune" "$results/transfer"
exec > >(tee -a "$out/log.txt") 2>&1

# step NAME COMMAND...: run once; a marker file records success.
step() {
  local name=$1; shift
  if [ -f "$out/done/$name" ]; then echo "== $name: done before"; return; fi
  echo "== $name: $(date -u +%FT%TZ)"
  local started=$SECONDS
  "$@"
  echo "$((SECONDS - started))" > "$out/done/$name"
  echo "== $name: $((SECONDS - started)) s"
}
dirs() { for t in $1; do printf '%s ' "$data/$t"; done; }

step stage0 "$bin" train det "${common[@]}" --data $(dirs "$upstream") --det all \
  --steps 120 --batch 6 --lr 3e-3 --eval-every 40 --eval-limit 150 --final-limit 300 --max-examples 2000 \
  --checkpoint runs/stage0/checkpoint.safetensors --out runs/stage0

# stage1 D: the subspace of dimension D from the stage-0 solutions (decomposition, then refinement).
stage1() {
  local d=$1
  step "stage1-d$d" "$bin" train subspace "${common[@]}" --solutions runs/stage0 --data-root "$data" \
    --dim "$d" --steps 12 --batch 4 --lr 1e-2 --eval-every 12 --eval-limit 60 --max-examples 2000 \
    --name "minilm-d$d" --f16 --out "$out/subspace-d$d.safetensors"
}
# decompose D: the decomposition alone (no --data-root: no refinement), for the ablation.
decompose() {
  local d=$1
  step "stage1-d$d" "$bin" train subspace "${common[@]}" --solutions runs/stage0 --dim "$d" \
    --name "minilm-d$d" --f16 --out "$out/subspace-d$d.safetensors"
}
stage1 "$default_d"

# Test scores on the unseen tasks use at most $test_limit examples per task (2 CPU cores).
test_limit=500
step original "sh" -c "'$bin' train det ${common[*]} --data $(dirs "$unseen") --det all --steps 100 --batch 6 \
  --lr 3e-3 --eval-every 50 --eval-limit 150 --final-limit $test_limit --max-examples 2000 \
  --checkpoint $out/original.checkpoint.safetensors \
  --out $out/original > $results/original.jsonl"

step zero-shot sh -c "for t in $unseen; do '$bin' eval ${common[*]} --data $data/\$t --zero-shot --split test --limit $test_limit; done > $results/zero_shot.jsonl"

# tune SPACE_NAME SUBSPACE_FILE OPTIMIZER DET [extra flags]
tune() {
  local space=$1 file=$2 optimizer=$3 det=$4; shift 4
  step "tune-$space-$optimizer-$det" sh -c "'$bin' tune ${common[*]} --subspace $file --data $(dirs "$unseen") \
    --det $det --head none --optimizer $optimizer --steps 30 --batch 8 --eval-every 15 --eval-limit 150 --final-limit $test_limit \
    --max-examples 2000 $* \
    --out $out/tasks/$space-$optimizer-$det > $results/tune/$space-$optimizer-$det.jsonl"
}

main_subspace=$out/subspace-d$default_d.safetensors
for det in adapter lora prefix; do
  tune "d$default_d" "$main_subspace" adam "$det" --lr 0.1
  step "transfer-d$default_d-$det" sh -c "for t in $unseen; do '$bin' transfer ${common[*]} --subspace $main_subspace \
    --data $data/\$t --task $out/tasks/d$default_d-adam-$det/\$t.json --split test --limit $test_limit; done > $results/transfer/d$default_d-$det.jsonl"
done

random_subspace=$out/subspace-random-d$default_d.safetensors
step random-subspace "$bin" subspace random --model "$model" --dim "$default_d" --seed 7 --out "$random_subspace"
for det in adapter lora prefix; do
  tune "random-d$default_d" "$random_subspace" adam "$det" --lr 0.1
done

# Publish the default subspace and example tasks (tuned through Adapter) for `deltaspace serve`.
step examples "$bin" tune "${common[@]}" --subspace "$main_subspace" --data "$data/sst2" --det adapter --head none \
  --steps 40 --batch 8 --lr 0.1 --eval-every 20 --eval-limit 200 --final-limit "$test_limit" --max-examples 2000 \
  --out "$out/tasks/examples"
mkdir -p "$model/subspaces" "$model/tasks"
cp "$main_subspace" "$model/subspaces/default.safetensors"
for t in $unseen; do cp "$out/tasks/d$default_d-adam-adapter/$t.json" "$model/tasks/$t.json"; done
cp "$out/tasks/examples/sst2.json" "$model/tasks/sst2.json"
echo "== published $model/subspaces/default.safetensors and $model/tasks/"

# Secondary: the ablation over d (through Adapter), gradient vs CMA-ES, the landscape.
for d in $dims; do
  [ "$d" = "$default_d" ] && continue
  decompose "$d"
  tune "d$d" "$out/subspace-d$d.safetensors" adam adapter --lr 0.1
done

tune "d$default_d" "$main_subspace" cmaes adapter --sigma 1.0

step landscape "$bin" landscape "${common[@]}" --subspace "$main_subspace" --data "$data/mpqa" \
  --tasks "$out/tasks/d$default_d-adam-adapter/mpqa.json" "$out/tasks/d$default_d-adam-lora/mpqa.json" \
  "$out/tasks/d$default_d-adam-prefix/mpqa.json" --grid 7 --limit 60 --out docs/landscape

"$bin" report --results "$results" --space "d$default_d" --json "$out/report.json" > "$out/report.md"
echo "== report: $out/report.md"
