#!/usr/bin/env bash
# Issue 10's measurement: on the 5 unseen tasks, for k = 16 and 64 examples per label and for the whole training
# set, the test accuracy (whole test sets) of every row a user would compare:
#   zero-shot   the frozen model with description prototypes
#   probe       logistic regression on frozen embeddings, L2 chosen on dev
#   head-only   z = 0 (LoRA, whose θ⁰ is a no-op), the head tuned as in the product
#   z           z only from N(0, 0.02²), through the DET chosen on dev (the paper's setting)
#   z+head      z and the head together from N(0, 0.02²) (`tune --init normal`: the product's setting until
#               2026-12-01, fifteenth session)
#   warm        z and the head together from the code of the upstream task nearest by label descriptions
#               (`tune --init upstream`)
#   random      z and the head in a random subspace of the same d (the control; a random subspace has no codes)
# The product's default, `tune` without --init, tunes both z+head and warm in one run and keeps the better on dev
# (the cold one on a tie). Every start of that run trains on the rows it would alone, so `deltaspace report
# --quality` derives its row, "guarded", from the z+head and warm lines instead of running the cold start twice.
#   lora, adapter, prefix   trained in their original space until dev stops improving
# With k per label, every row trains on the same k per label and chooses (early stopping, DET, L2) on the same
# k per label of dev. On the whole training set, the tuned rows evaluate on 300 dev examples during training (as
# stage 0 did for the original-space DETs; the final scores use whole splits), which saves most of the time
# evaluations take (tweet_offensive's dev set has 1,000 examples). Seeds 1 2 3 for the rows that decide the targets
# (z+head and warm, whose better on dev is the product's, probe, random), seed 1 for the rest.
#
#   scripts/quality.sh DATA_DIR [SUBSPACE]     # SUBSPACE: the subspace file [default: the shipped one]
#
# Resumable: one JSON line per (row, task, shots, seed), and a line that is there is not run again; so the runs of
# many sessions add up. A run cut off mid-way resumes from its checkpoint (runs/quality/<subspace, or "baselines" for
# the DETs>-<row>-<task>-<shots>-<seed>.checkpoint.safetensors, written at every dev evaluation, removed once its
# line is written); its line's seconds count every part (checkpoints written before 2026-12-03's twenty-seventh
# session carry no times, so a run resumed from one counts only the part after the resume). The rows that decide issue
# 10's targets come first
# (z+head, warm, probe, random, and head only at seed 1), so that a matrix cut short has what decides; then the rest
# of the table (z and the DETs, seed 1). The targets are at k = 16 and on the whole training set, so those come
# first, all three seeds of each; k = 64 comes at seed 1 with the rest of the table, and its seeds 2 and 3 last. The rows that use no subspace (zero-shot, probe, head-only, the DETs) go to
# docs/results/quality/baselines.jsonl, shared by every subspace; z, z+head, warm and random go to
# docs/results/quality/<subspace name>.jsonl. The DETs on the whole training set are stage 0's solutions of the
# unseen tasks (scripts/stage0.sh trains them the same way); their lines are copied from docs/results/stage0.jsonl
# once stage 0 has them.
# A line: {row, task, shots ("full" or k), seed, subspace, det, dev, test: {accuracy, macro_f1, n}, seconds}.
# Two quality.sh can share the matrix (one per core): each run holds a lock in runs/quality/locks/, the other skips
# it, and each waits at the end for the runs it skipped.
# DELTASPACE_RUNTIME_INTRA_THREADS sets ONNX Runtime's threads. Three variables limit a run to part of the matrix:
# QUALITY_ROWS="probe head-only ..." (for example the baselines while a new subspace is still being built),
# QUALITY_SHOTS="16 64 full" and QUALITY_SEEDS="1 2 3" (scripts/pipeline.sh's example-tasks step runs z+head on the
# whole training sets at seed 1: the tasks it publishes). Zero-shot counts as the whole training set at seed 1.
#
#   deltaspace report --quality docs/results/quality/baselines.jsonl docs/results/quality/<subspace>.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/quality.sh DATA_DIR [SUBSPACE]}
model=models/all-MiniLM-L6-v2
subspace_file=${2:-$model/subspaces/default.safetensors}
rows=${QUALITY_ROWS:-zero-shot probe head-only z z+head warm random lora adapter prefix}
shots_wanted=${QUALITY_SHOTS:-16 64 full}
seeds_wanted=${QUALITY_SEEDS:-1 2 3}
# check_words VARIABLE VALUE ALLOWED: exits 2 unless every word of VALUE is one of ALLOWED (a typo would run nothing).
check_words() {
  local word words
  read -ra words <<< "$2"
  for word in "${words[@]}"; do
    case " $3 " in *" $word "*) ;; *) echo "$1: \"$word\" is not one of: $3" >&2; exit 2 ;; esac
  done
}
check_words QUALITY_ROWS "$rows" "zero-shot probe head-only z z+head warm random lora adapter prefix"
check_words QUALITY_SHOTS "$shots_wanted" "16 64 full"
check_words QUALITY_SEEDS "$seeds_wanted" "1 2 3"
runs=runs/quality
mkdir -p "$runs" docs/results/quality
# Own copies of the binary, its configuration and the model, so a rebuild, an edit or a re-export
# cannot swap them mid-run.
. scripts/lib/long-run.sh
own_copies "$runs"
bin=("$runs/deltaspace" --config "$runs/deltaspace.toml")
common=(--model "$runs/model")
# The matrix tunes from its own copy of the subspace file, taken first and read for its id, so that a publish
# (scripts/pipeline.sh) or a checkout replacing the file mid-matrix cannot move later runs to another subspace
# under the same name; tune checks the copy's hash as it loads it.
copy=$runs/subspace.$$.safetensors
cp -p "$subspace_file" "$copy"
info=$("${bin[@]}" subspace info "$copy")
name=$(printf '%s' "$info" | python3 -c 'import json, sys; print(json.load(sys.stdin)["name"])')
d=$(printf '%s' "$info" | python3 -c 'import json, sys; print(json.load(sys.stdin)["d"])')
id=$(printf '%s' "$info" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
results=docs/results/quality/$name.jsonl
baselines=docs/results/quality/baselines.jsonl
random=$runs/random-d$d.safetensors
mkdir -p "$runs/locks"
# The subspace's id, recorded when its matrix began: every later run tunes in a subspace of that id, so that
# lines of one name never mix two subspaces (a new default published under the same name, say).
claim "$runs/locks/subspace-$name" wait
if [ ! -f "$runs/$name.id" ]; then echo "$id" > "$runs/$name.id"; fi
if [ "$(cat "$runs/$name.id")" != "$id" ]; then
  echo "quality: $subspace_file is $id, but the lines of $results were made in $(cat "$runs/$name.id");" \
    "finish that matrix with its subspace file, or move its lines and $runs/$name.id aside to begin another" >&2
  rm -f "$copy"
  exit 2
fi
mv -f "$copy" "$runs/subspace-$id.safetensors"
subspace_file=$runs/subspace-$id.safetensors
release "$runs/locks/subspace-$name"
# Made once, under a lock: two quality.sh starting together would write the same file.
claim "$runs/locks/random-d$d" wait
[ -f "$random" ] || "${bin[@]}" subspace random --model "$runs/model" --dim "$d" --seed 7 --out "$random" > /dev/null
release "$runs/locks/random-d$d"
touch "$results" "$baselines"
held=()  # runs another quality.sh was doing when this one came to them
left=()  # the DETs' whole-data lines stage 0 has not made yet
tasks=$UNSEEN_TASKS

# results_of ROW: where the row's lines go.
results_of() {
  case $1 in z|z+head|warm|random) echo "$results" ;; *) echo "$baselines" ;; esac
}

# done ROW TASK SHOTS SEED: whether the line is in the results already.
done_before() {
  grep -q "\"row\":\"$1\",\"task\":\"$2\",\"shots\":\"$3\",\"seed\":$4," "$(results_of "$1")"
}

# record ROW TASK SHOTS SEED SECONDS JSON: appends one line from a command's JSON output.
record() {
  local subspace=null
  [ "$(results_of "$1")" = "$results" ] && subspace=$name
  python3 - "$@" "$subspace" >> "$(results_of "$1")" <<'PY'
import json, sys
row, task, shots, seed, seconds, output, subspace = sys.argv[1:8]
out = json.loads(output.strip().splitlines()[-1])
test = out.get("test") or {k: out[k] for k in ("accuracy", "macro_f1", "n")}
line = {"row": row, "task": task, "shots": shots, "seed": int(seed),
        "subspace": None if subspace == "null" else subspace,
        "det": out.get("det"), "dev": out.get("dev"), "test": test,
        # This process's wall time, or tune's own count when larger: a resumed run's covers every part.
        "seconds": max(int(seconds), int(out.get("seconds") or 0))}
print(json.dumps(line, separators=(",", ":")))
PY
}

# stage0_line TASK DET: stage 0's line for an unseen task's DET, if it has finished.
stage0_line() {
  grep -s "\"det\":\"$2\"," docs/results/stage0.jsonl | grep "\"task\":\"$1\"," | tail -1
}

# run ROW TASK SHOTS SEED [wait]: one measurement; one that another quality.sh is running goes to `held`, or with
# `wait`, is waited for.
run() {
  local row=$1 task=$2 shots=$3 seed=$4
  case " $rows " in *" $row "*) ;; *) return ;; esac
  case " $shots_wanted " in *" $shots "*) ;; *) return ;; esac
  case " $seeds_wanted " in *" $seed "*) ;; *) return ;; esac
  done_before "$row" "$task" "$shots" "$seed" && return
  # The rows that need no subspace are shared by every subspace's matrix: one lock and checkpoint for them all, but
  # head only's checkpoint, which tune ties to the subspace it ran in.
  local key=$name
  [ "$(results_of "$row")" = "$baselines" ] && key=baselines
  local lock=$runs/locks/$key-$row-$task-$shots-$seed
  if ! claim "$lock" "${5:-}"; then held+=("$row $task $shots $seed"); return; fi
  if done_before "$row" "$task" "$shots" "$seed"; then release "$lock"; return; fi  # finished by another meanwhile
  case $row/$shots in lora/full|adapter/full|prefix/full)
    local line; line=$(stage0_line "$task" "$row" || true)
    if [ -n "$line" ]; then
      record "$row" "$task" "$shots" "$seed" \
        "$(printf '%s' "$line" | python3 -c 'import json, sys; print(json.load(sys.stdin)["seconds"])')" "$line"
    else
      echo "== $row $task shots=$shots: stage 0 has no line for it yet (scripts/stage0.sh); left for later"
      left+=("$row $task")
    fi
    release "$lock"
    return ;;
  esac
  # k per label for training and dev; on the whole training set, dev evaluations on 300 examples, as stage 0's.
  local few=() dev=(--eval-limit 300)
  [ "$shots" = full ] || few=(--shots "$shots") dev=()
  local scope=$key
  [ "$row" = head-only ] && scope=$name
  local checkpoint=$runs/$scope-$row-$task-$shots-$seed.checkpoint.safetensors
  # Named by the subspace too: a task file of another subspace's matrix must not replace this one's.
  local task_file=$runs/$scope-$row-$task-$shots-$seed.json
  local tune=("${bin[@]}" tune "${common[@]}" --data "$data/$task" --seed "$seed" "${few[@]}" "${dev[@]}"
    --checkpoint "$checkpoint")
  local output started=$SECONDS
  echo "== $row $task shots=$shots seed=$seed: $(date -u +%FT%TZ)"
  case $row in
    zero-shot) output=$("${bin[@]}" eval "${common[@]}" --data "$data/$task" --zero-shot --split test) ;;
    probe) output=$("${bin[@]}" eval "${common[@]}" --data "$data/$task" --probe --split test --seed "$seed" "${few[@]}") ;;
    head-only) output=$("${tune[@]}" --subspace "$subspace_file" --det lora --head prototypes --freeze-z \
      --out "$task_file") ;;
    z) output=$("${tune[@]}" --subspace "$subspace_file" --head none --init normal \
      --out "$task_file") ;;
    z+head) output=$("${tune[@]}" --subspace "$subspace_file" --head prototypes --init normal \
      --out "$task_file") ;;
    warm) output=$("${tune[@]}" --subspace "$subspace_file" --head prototypes --init upstream \
      --out "$task_file") ;;
    random) output=$("${tune[@]}" --subspace "$random" --head prototypes --out "$task_file") ;;
    lora|adapter|prefix) output=$("${bin[@]}" train det "${common[@]}" --data "$data/$task" --det "$row" --seed "$seed" \
      "${few[@]}" --steps 1500 --lr 3e-3 --eval-every 25 --patience 4 --checkpoint "$checkpoint" \
      --out "$runs/$row-$task-$shots-$seed.safetensors") ;;
  esac
  record "$row" "$task" "$shots" "$seed" "$((SECONDS - started))" "$output"
  rm -f "$checkpoint"
  # Head only's line is shared: a checkpoint of the same run cut off in another subspace is done with too.
  if [ "$row" = head-only ]; then rm -f "$runs"/*-head-only-"$task-$shots-$seed".checkpoint.safetensors; fi
  release "$lock"
}

for t in $tasks; do run zero-shot "$t" full 1; done
# The rows that decide the targets (and head only, the other half of "the stronger baseline") first: k = 16 and the
# whole training set (where the targets are), each for seeds 1 to 3; then k = 64 at seed 1 and the rest of the table
# (one seed), so that every cell has a figure; then k = 64's seeds 2 and 3.
# deciding SHOTS SEEDS...: the rows that decide the targets (and head only at seed 1) for these seeds.
deciding() {
  local shots=$1 seed t row
  shift
  for seed in "$@"; do
    for t in $tasks; do
      for row in probe z+head warm random; do run "$row" "$t" "$shots" "$seed"; done
      if [ "$seed" = 1 ]; then run head-only "$t" "$shots" "$seed"; fi
    done
  done
}
deciding 16 1 2 3
deciding full 1 2 3
deciding 64 1
for shots in 16 64 full; do
  for t in $tasks; do
    for row in z lora adapter prefix; do run "$row" "$t" "$shots" 1; done
  done
done
deciding 64 2 3
# What another quality.sh was running: wait for each, and run it here if that one ended without its line.
waiting=("${held[@]}") held=()
for item in "${waiting[@]}"; do
  echo "== waiting for another quality.sh's $item"
  # shellcheck disable=SC2086 # item is "ROW TASK SHOTS SEED"
  run $item wait
done
if [ ${#left[@]} -gt 0 ]; then
  echo "== quality: every line of rows [$rows], shots [$shots_wanted], seeds [$seeds_wanted] is in $results and" \
    "$baselines but the whole-data lines of ${left[*]}, which wait for stage 0 (scripts/stage0.sh)"
else
  echo "== quality: every line of rows [$rows], shots [$shots_wanted], seeds [$seeds_wanted] is in $results and $baselines"
fi
