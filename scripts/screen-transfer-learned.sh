#!/usr/bin/env bash
# Does the learned part of a tuned z carry the task to another DET? In the default subspace only the first
# columns of U (one per upstream solution) are learned, and they mean the same in every DET; the rest are drawn
# per DET, so their coordinates mean nothing through another DET. This screen keeps the learned coordinates of
# each z the pipeline tuned on the whole training sets (runs/pipeline-d1024/tasks/d1024-DET/TASK.json), sets the
# drawn ones to 0, and scores the result through every DET on the whole test set, as `deltaspace transfer` does
# for the z itself (docs/results/pipeline-d1024/transfer/). If the learned coordinates carried the task, the
# projected z would transfer better than the whole z.
#
#   scripts/screen-transfer-learned.sh DATA_DIR
#
# Lines (the transfer command's, one per source DET, task and target DET) in
# docs/results/screen-transfer-learned.jsonl; a source task whose lines are there is not run again.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/screen-transfer-learned.sh DATA_DIR}
. scripts/lib/long-run.sh
runs=runs/screen-transfer-learned
own_copies "$runs"
bin=("$runs/deltaspace" --config "$runs/deltaspace.toml")
subspace=models/all-MiniLM-L6-v2/subspaces/default.safetensors
learned=$(printf '%s' "$("${bin[@]}" subspace info "$subspace")" \
  | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["upstream_codes"]))')
out=docs/results/screen-transfer-learned.jsonl
touch "$out"
for det in lora adapter prefix; do
  for task in $UNSEEN_TASKS; do
    grep -q "\"task\":\"$task\",\"source_det\":\"$det\"," "$out" && continue
    projected=$runs/$det-$task.json
    python3 -c 'import json, sys
task = json.load(open(sys.argv[1]))
learned = int(sys.argv[2])
task["z"] = task["z"][:learned] + [0.0] * (len(task["z"]) - learned)
json.dump(task, open(sys.argv[3], "w"))' "runs/pipeline-d1024/tasks/d1024-$det/$task.json" "$learned" "$projected"
    "${bin[@]}" transfer --model "$runs/model" --subspace "$subspace" --data "$data/$task" --task "$projected" \
      --split test >> "$out"
  done
done
