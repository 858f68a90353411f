#!/usr/bin/env bash
# Issue 10's pipeline, end to end: the default subspace and everything docs/RESULTS.md reports about it.
#   1. stage 0: LoRA, Adapter and Prefix trained to convergence on the 17 upstream tasks and the 5 unseen ones
#      (scripts/stage0.sh: committed f16 solutions, resumable);
#   2. stage 1: the joint decomposition of the 17 upstream solutions (one learned direction per task), completed by
#      seeded random directions up to D (`train subspace --complete-to D`: the file stores the random part as its
#      seed, so it stays a few MB at any D), with the upstream tasks' codes and label descriptions (`tune --init
#      upstream` chooses by them); PIPELINE_STAGE1 adds flags ("--unit-codes", say);
#   3. the comparison against a user's alternatives (scripts/quality.sh with that subspace: zero-shot, the probe,
#      head only, z, z + head, a random subspace of the same D, the DETs in their original space; k = 16, 64 and
#      the whole training set; 3 seeds for the deciding rows);
#   4. the paper's tables on the whole training sets: z alone through each DET (the stage-2 defaults, --head none)
#      relative to stage 0's solutions of the unseen tasks, zero-shot transfer between DETs, and the random
#      subspace as the control, written in the layout `deltaspace report --results` reads;
#   5. publishing: the subspace becomes models/all-MiniLM-L6-v2/subspaces/default.safetensors and the example tasks
#      (models/all-MiniLM-L6-v2/tasks/) are the unseen tasks tuned with `tune`'s defaults (z + head from the guarded
#      start) on their whole training sets, plus sst2. The unseen ones are quality.sh's z+head and warm runs on the
#      whole training sets at seed 1, the one `tune`'s default keeps (the warm one where it leads on dev by more
#      than the start margin: `report --quality`'s row "guarded"), which steps example-tasks and example-tasks-warm
#      run ahead of the rest of the matrix, so that publishing waits for every step but quality: the pipeline that
#      finishes the last of those steps publishes, and the one that runs step quality publishes again at its end,
#      with the whole matrix in the report.
#
#   scripts/pipeline.sh DATA_DIR [D]      # DATA_DIR: the 22 task directories; D: the subspace's d [default: 1024]
#
# Every step is resumable: a step that finished leaves a marker under runs/pipeline-dD/done/ and is skipped; long
# steps checkpoint. Two pipelines can share the 2 cores, each with DELTASPACE_RUNTIME_INTRA_THREADS=1: a step runs in
# one of them only (runs/pipeline-dD/running/NAME is its lock; the other waits for it), and
#   PIPELINE_SKIP="example-tasks example-tasks-warm quality"
# lets the second start on the tables while the first runs those; PIPELINE_LOG names a log [default:
# runs/pipeline-dD/log.txt].
# scripts/pipeline-lanes.sh starts both. Results go to docs/results/pipeline-dD/ (commit them), and so do the step
# markers and checkpoints under runs/pipeline-dD/ (.gitignore lets them in), so that the next session resumes; the
# tables go to runs/pipeline-dD/report.md:
#   deltaspace report --results docs/results/pipeline-dD --space dD
#   deltaspace report --quality docs/results/quality/baselines.jsonl docs/results/quality/minilm-dD.jsonl
# At 2 CPU cores this is tens of CPU-hours (stage 0 and quality.sh dominate); sessions add to it. The first
# pipeline (2026-11-27, d = 16, short budgets) is commit 73330b2's version of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/pipeline.sh DATA_DIR [D]}
d=${2:-1024}
model=models/all-MiniLM-L6-v2
upstream_solutions=$model/stage0/upstream
out=runs/pipeline-d$d
results=docs/results/pipeline-d$d
mkdir -p "$out/done" "$out/running" "$results/tune" "$results/transfer"
exec > >(tee -a "${PIPELINE_LOG:-$out/log.txt}") 2>&1
. scripts/lib/long-run.sh
unseen=$UNSEEN_TASKS

# step NAME COMMAND...: run once; a marker file records success. A step in PIPELINE_SKIP is left to later (and
# publishing with it); a step another pipeline is running is waited for (what comes after may need it).
left=()
step() {
  local name=$1; shift
  local lock=$out/running/$name
  if [ -f "$out/done/$name" ]; then echo "== $name: done before"; return; fi
  case " ${PIPELINE_SKIP:-} " in *" $name "*) echo "== $name: skipped (PIPELINE_SKIP)"; left+=("$name"); return ;; esac
  if ! claim "$lock"; then
    echo "== $name: running in pipeline $(cat "$lock"); waiting for it"
    claim "$lock" wait
  fi
  if [ -f "$out/done/$name" ]; then echo "== $name: done by the other pipeline"; release "$lock"; return; fi
  echo "== $name: $(date -u +%FT%TZ)"
  local started=$SECONDS
  "$@"
  echo "$((SECONDS - started))" > "$out/done/$name"
  release "$lock"
  echo "== $name: $((SECONDS - started)) s"
}

# Every step publishing needs: all of them but quality, whose matrix goes on for sessions after.
publish_needs="stage0 stage1 random example-tasks example-tasks-warm original zero-shot examples"
for det in lora adapter prefix; do publish_needs+=" tune-d$d-$det transfer-$det tune-random-d$d-$det"; done

# guarded_row TASK: the row whose whole-data run at seed 1 `tune`'s default keeps ("z+head" or "warm"), as
# `report --quality` derives it (its row "guarded", by tune's own rule); fails when that line is missing.
guarded_row() {
  local json status
  json=$(mktemp) || return
  if ! "${bin[@]}" report --quality "docs/results/quality/minilm-d$d.jsonl" --json "$json" > /dev/null; then
    rm -f "$json"
    return 1
  fi
  python3 - "$json" "$1" <<'PY'
import json, sys
kept = [l["kept"] for l in json.load(open(sys.argv[1]))
        if (l["row"], l["task"], l["shots"], l["seed"]) == ("guarded", sys.argv[2], "full", 1)]
if not kept:
    sys.exit(f"{sys.argv[2]}: no whole-data line with a dev score for z+head and warm at seed 1")
print(kept[0])
PY
  status=$?
  rm -f "$json"
  return $status
}

# publish_when_ready: the subspace, the example tasks and the report, once every step in publish_needs is done
# (by this pipeline or the other); run again, it publishes the same files and a report with more of the matrix.
# One pipeline at a time (both lanes may come here at once); it refuses a file that is missing or was tuned for
# another subspace, and replaces each published file by a rename, so a server starting meanwhile reads whole files.
publish_when_ready() {
  local name file t row missing=() sources=("$subspace" "$out/tasks/examples/sst2.json")
  local -A kept=()  # unseen task → the task file publishing copies
  for name in $publish_needs; do [ -f "$out/done/$name" ] || missing+=("$name"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== not published yet: ${missing[*]} not done; the pipeline that finishes the last of them publishes"
    return
  fi
  claim "$out/running/publish" wait
  local id
  id=$("${bin[@]}" subspace info "$subspace" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  # Each unseen task's guarded choice, before anything is copied: a missing line publishes nothing.
  for t in $unseen; do
    if row=$(guarded_row "$t"); then
      kept[$t]=runs/quality/minilm-d$d-$row-$t-full-1.json
      sources+=("${kept[$t]}")
    else
      missing+=("a guarded choice for $t (see the error above)")
    fi
  done
  for file in "${sources[@]}"; do
    if [ ! -f "$file" ]; then
      missing+=("$file (missing)")
    elif [ "${file%.json}" != "$file" ] && ! python3 -c \
        'import json, sys; sys.exit(json.load(open(sys.argv[1])).get("subspace") != sys.argv[2])' "$file" "$id"; then
      missing+=("$file (not tuned for $id)")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== not published: ${missing[*]}" >&2
    release "$out/running/publish"
    return
  fi
  mkdir -p "$model/subspaces" "$model/tasks"
  copy_if_changed "$subspace" "$model/subspaces/default.safetensors"
  for t in $unseen; do copy_if_changed "${kept[$t]}" "$model/tasks/$t.json"; done
  copy_if_changed "$out/tasks/examples/sst2.json" "$model/tasks/sst2.json"
  echo "== published $id as $model/subspaces/default.safetensors, and $model/tasks/"
  { "${bin[@]}" report --results "$results" --space "d$d" --json "$out/report.json"
    "${bin[@]}" report --quality docs/results/quality/baselines.jsonl "docs/results/quality/minilm-d$d.jsonl"
  } > "$out/report.md.new"
  mv -f "$out/report.md.new" "$out/report.md"
  echo "== report: $out/report.md"
  release "$out/running/publish"
}

step stage0 scripts/stage0.sh "$data"
learned=$(ls "$upstream_solutions"/*.prefix.safetensors | wc -l)
if [ "$learned" -lt 17 ] && [ -z "${PIPELINE_PARTIAL:-}" ]; then
  echo "stage 0 has $learned of the 17 upstream tasks; run it to the end (or set PIPELINE_PARTIAL=1)" >&2
  exit 2
fi

# Own copies of the binary, its configuration and the model, so a rebuild cannot swap them mid-run.
own_copies "$out"
bin=("$out/deltaspace" --config "$out/deltaspace.toml")
common=(--model "$out/model")

subspace=$out/minilm-d$d.safetensors
random=$out/random-d$d.safetensors
# The two subspace files are not committed (seconds to make, and deterministic); a checkout that has the step
# markers but not the files makes them again.
[ -f "$subspace" ] || rm -f "$out/done/stage1"
# One made before subspaces carried the upstream tasks' label descriptions is made again with them (same id).
if [ -f "$subspace" ]; then
  info=$("${bin[@]}" subspace info "${common[@]}" "$subspace")
  case $info in *'"upstream_descriptions":true'*) ;; *) rm -f "$out/done/stage1" ;; esac
fi
[ -f "$random" ] || rm -f "$out/done/random"
# At D ≤ the learned directions, the top D of them and no random ones (the transfer check at D = 17).
complete=(--complete-to "$d")
[ "$d" -gt "$learned" ] || complete=()
# shellcheck disable=SC2086 # PIPELINE_STAGE1 is a list of flags
step stage1 "${bin[@]}" train subspace "${common[@]}" --solutions "$upstream_solutions" --data-root "$data" \
  --dim "$((d < learned ? d : learned))" --steps 0 ${complete[@]+"${complete[@]}"} --seed 7 --f16 \
  --name "minilm-d$d" ${PIPELINE_STAGE1:-} --out "$subspace"
step random "${bin[@]}" subspace random --model "$out/model" --dim "$d" --seed 7 --out "$random"

# The published unseen tasks first (publishing waits for them, not for the whole matrix), then the matrix.
step example-tasks env QUALITY_ROWS=z+head QUALITY_SHOTS=full QUALITY_SEEDS=1 scripts/quality.sh "$data" "$subspace"
step example-tasks-warm env QUALITY_ROWS=warm QUALITY_SHOTS=full QUALITY_SEEDS=1 scripts/quality.sh "$data" "$subspace"
publish_when_ready
step quality env -u QUALITY_ROWS -u QUALITY_SHOTS -u QUALITY_SEEDS scripts/quality.sh "$data" "$subspace"

# The paper's tables: stage 0's unseen solutions are the denominators, the frozen model a control. Each step's
# work is a function of this shell, so paths with spaces stay whole and a failing command stops the pipeline.
# Each writes FILE.new and renames it over FILE when done, so a step run again leaves the committed lines whole
# until its new ones are.
original_lines() {
  grep -h -E "\"task\":\"($(echo $unseen | tr ' ' '|'))\"" docs/results/stage0.jsonl > "$results/original.jsonl.new"
  mv -f "$results/original.jsonl.new" "$results/original.jsonl"
}
zero_shot_lines() {
  local t
  for t in $unseen; do
    "${bin[@]}" eval "${common[@]}" --data "$data/$t" --zero-shot --split test
  done > "$results/zero_shot.jsonl.new"
  mv -f "$results/zero_shot.jsonl.new" "$results/zero_shot.jsonl"
}
# tune_z SPACE FILE DET: z alone (the paper's setting) through DET on the whole training sets, tasks in shared runs,
# with tune's schedule (the committed d = 1,024 tables ran the one before 2026-12-01: 500 steps, patience 4).
tune_z() {
  local space=$1 file=$2 det=$3 t
  local checkpoint=$out/tune-$space-$det.checkpoint.safetensors dirs=()
  for t in $unseen; do dirs+=("$data/$t"); done
  "${bin[@]}" tune "${common[@]}" --subspace "$file" --data "${dirs[@]}" --det "$det" --head none --init normal \
    --seed 1 --checkpoint "$checkpoint" --out "$out/tasks/$space-$det" > "$results/tune/$space-adam-$det.jsonl.new"
  mv -f "$results/tune/$space-adam-$det.jsonl.new" "$results/tune/$space-adam-$det.jsonl"
  rm -f "$checkpoint"
}
# transfer_lines DET: the z tuned through DET, decoded through every DET.
transfer_lines() {
  local det=$1 t
  for t in $unseen; do
    "${bin[@]}" transfer "${common[@]}" --subspace "$subspace" --data "$data/$t" \
      --task "$out/tasks/d$d-$det/$t.json" --split test
  done > "$results/transfer/d$d-$det.jsonl.new"
  mv -f "$results/transfer/d$d-$det.jsonl.new" "$results/transfer/d$d-$det.jsonl"
}
step original original_lines
step zero-shot zero_shot_lines
for det in lora adapter prefix; do
  step "tune-d$d-$det" tune_z "d$d" "$subspace" "$det"
  step "transfer-$det" transfer_lines "$det"
  step "tune-random-d$d-$det" tune_z "random-d$d" "$random" "$det"
done

# The example sst2 task, tuned as a user's `tune` would (the whole training set, defaults); then publishing. sst2 is
# an upstream task, so the default's warm start is its own code. (The committed sst2 task was tuned under the
# one-start default before 2026-12-01; removing runs/pipeline-dD/done/examples tunes it again.)
step examples "${bin[@]}" tune "${common[@]}" --subspace "$subspace" --data "$data/sst2" --seed 1 \
  --out "$out/tasks/examples"
[ ${#left[@]} -eq 0 ] || echo "== skipped here (PIPELINE_SKIP): ${left[*]}"
publish_when_ready
