#!/usr/bin/env bash
# Does an upstream task's solution help an unseen task before any tuning? Each upstream task's stage-0 solution
# (what its code in the default subspace decodes to, up to f16 rounding: the learned columns span them; see
# export/upstream_codes.py) is scored on each unseen
# task's dev set, with the unseen task's label descriptions, against the frozen model (zero-shot) on the same
# examples. A solution that beats zero-shot there is a starting point a random subspace cannot offer (z could start
# at its code); none beating it says that the learned directions carry nothing across tasks even before tuning.
#
#   scripts/screen-cross-task.sh DATA_DIR [DET...]     # DET: lora adapter prefix [default: lora]
#
# One line per (unseen task, upstream task or "zero-shot", DET) in docs/results/screen-cross-task.jsonl; a line
# that is there is not run again. CROSS_LIMIT dev examples per unseen task [default: 200], at most 128 tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/screen-cross-task.sh DATA_DIR [DET...]}
shift
dets=${*:-lora}
limit=${CROSS_LIMIT:-200}
. scripts/lib/long-run.sh
runs=runs/screen-cross-task
own_copies "$runs"
bin=("$runs/deltaspace" --config "$runs/deltaspace.toml")
solutions=models/all-MiniLM-L6-v2/stage0/upstream
out=docs/results/screen-cross-task.jsonl
touch "$out"

# score UNSEEN SOURCE DET FLAGS...: one line, unless it is there.
score() {
  local unseen=$1 source=$2 det=$3
  shift 3
  grep -q "\"unseen\":\"$unseen\",\"source\":\"$source\",\"det\":\"$det\"," "$out" && return
  local result
  result=$("${bin[@]}" eval --model "$runs/model" --data "$data/$unseen" --split dev --limit "$limit" \
    --max-seq-len 128 "$@" | tail -1)
  python3 -c 'import json, sys
r = json.loads(sys.argv[4])
print(json.dumps({"unseen": sys.argv[1], "source": sys.argv[2], "det": sys.argv[3], "accuracy": r["accuracy"],
  "macro_f1": r["macro_f1"], "n": r["n"]}, separators=(",", ":")))' "$unseen" "$source" "$det" "$result" >> "$out"
}

for unseen in $UNSEEN_TASKS; do
  score "$unseen" zero-shot none --zero-shot
  for det in $dets; do
    for source in $UPSTREAM_TASKS; do
      score "$unseen" "$source" "$det" --solution "$solutions/$source.$det.safetensors"
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
from collections import defaultdict
lines = [json.loads(l) for l in open(sys.argv[1])]
zero = {l["unseen"]: l["accuracy"] for l in lines if l["source"] == "zero-shot"}
best = defaultdict(lambda: (None, -1.0))
for l in lines:
    key = (l["unseen"], l["det"])
    if l["source"] != "zero-shot" and l["accuracy"] > best[key][1]:
        best[key] = (l["source"], l["accuracy"])
print("| unseen task | DET | zero-shot dev % | best upstream solution | its dev % |")
print("|---|---|---|---|---|")
for (unseen, det), (source, accuracy) in sorted(best.items()):
    print(f"| {unseen} | {det} | {100 * zero[unseen]:.1f} | {source} | {100 * accuracy:.1f} |")
PY
