#!/usr/bin/env bash
# z + head (prototypes) in the random d = 1,024 subspace of the d screen, through LoRA, k = 16 per label, seed 1, on
# the 5 unseen tasks: the k = 16 counterpart of the screen's k = 64 rows, against quality.sh's k = 16 baselines.
#   scripts/screen-k16.sh DATA_DIR      # after scripts/screen-d.sh (its model copy and random-d1024 subspace)
# Resumable: a task with a line in docs/results/screen-k16.jsonl is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/screen-k16.sh DATA_DIR}
bin=(runs/screen-d/deltaspace --config runs/screen-d/deltaspace.toml)
out=docs/results/screen-k16.jsonl
touch "$out"
. scripts/lib/long-run.sh
# Hold screen-d's copies as its runs do (a shared lock on runs/screen-d/.in-use), so a screen-d.sh starting
# meanwhile cannot refresh the binary or model under this one.
exec {in_use}>> runs/screen-d/.in-use
flock -s "$in_use"
for t in $UNSEEN_TASKS; do
  grep -q "\"task\":\"$t\"" "$out" && continue
  started=$SECONDS
  line=$("${bin[@]}" tune --model runs/screen-d/model --data "$data/$t" --shots 16 --seed 1 \
    --subspace runs/screen-d/random-d1024.safetensors --det lora --head prototypes --out runs/screen-d/k16-$t.json | tail -1)
  python3 -c 'import json, sys
out = json.loads(sys.argv[1])
print(json.dumps({"task": sys.argv[2], "kind": "random", "d": 1024, "shots": 16, "seed": 1, "det": out.get("det"),
  "head": "prototypes", "dev": out.get("dev"), "test": out.get("test"), "seconds": int(sys.argv[3])}, separators=(",", ":")))' \
    "$line" "$t" "$((SECONDS - started))" >> "$out"
done
