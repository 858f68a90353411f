#!/usr/bin/env bash
# A screen of the task head (issue 10): two unseen tasks, one seed, the shipped subspace, z tuned through
# Adapter with no head, with biases, and with biases and prototypes, beside the frozen model (zero-shot).
# Small on purpose (2 CPU cores shared with stage 0): it chooses what the full matrix runs, it is not the matrix.
#
#   scripts/screen-head.sh DATA_DIR [TASK...]     # default tasks: mpqa tweet_offensive
#
# Writes one JSON line per (task, head) to docs/results/screen-head.jsonl (appended, with the settings), and the
# tuned task files under runs/screen/. DELTASPACE_RUNTIME_INTRA_THREADS sets ONNX Runtime's threads.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/screen-head.sh DATA_DIR [TASK...]}
shift
tasks=${*:-mpqa tweet_offensive}
model=models/all-MiniLM-L6-v2
runs=runs/screen
results=docs/results/screen-head.jsonl
mkdir -p "$runs"
# Own copies of the binary, its configuration and the model, so a rebuild, an edit or a re-export
# cannot swap them mid-run.
. scripts/lib/long-run.sh
own_copies "$runs"
bin=("$runs/deltaspace" --config "$runs/deltaspace.toml")
dirs=(); for t in $tasks; do dirs+=("$data/$t"); done
settings='"steps":100,"batch":16,"lr":0.05,"seed":42,"subspace":"default"'
for t in $tasks; do
  "${bin[@]}" eval --model "$runs/model" --data "$data/$t" --zero-shot --split test \
    | sed "s/^{/{\"head\":\"zero-shot\",/" >> "$results"
done
for head in none bias prototypes; do
  echo "== head $head: $(date -u +%FT%TZ)"
  "${bin[@]}" tune --model "$runs/model" --data "${dirs[@]}" --det adapter --head "$head" --init normal \
    --steps 100 --batch 16 --lr 0.05 --eval-every 25 --eval-limit 200 --seed 42 --out "$runs/$head" \
    | sed "s/^{/{\"head\":\"$head\",$settings,/" >> "$results"
done
