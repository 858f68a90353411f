#!/usr/bin/env bash
# A screen of the subspace (issue 10), before the full matrix: z and the head (prototypes) tuned together on two
# unseen tasks with k = 64 examples per label, one seed, one DET (SCREEN_DET, default LoRA) to keep it cheap, in
#   random   a random subspace through θ⁰ of dimension d (`subspace random`, seed 7): needs no stage 0;
#   hybrid   the stage-0 decomposition of the upstream solutions finished so far (one learned direction per
#            task) completed by seeded random directions up to d (`train subspace --steps 0 --complete-to d`);
#            with d = the number of learned directions, the learned subspace alone;
#   scaled   the hybrid with each learned direction scaled so that the upstream codes have unit RMS along it
#            (`--unit-codes`): stage 2's steps then reach as far along learned directions as the upstream
#            solutions lie;
#   refined  the hybrid after stage 1's refinement on the upstream tasks' data (the paper's objective; `train
#            subspace --steps S --data-root DATA_DIR`, S = SCREEN_REFINE_STEPS [default 40], 4 rows per task and
#            DET a step, dev on 100 examples per task every 10 steps); the refined U is kept only if it beats the
#            decomposition on the upstream tasks' dev sets, and both dev figures go to
#            docs/results/stage1-refine.jsonl.
#   gradient the top d principal directions of minibatch gradients of the upstream tasks' losses at θ⁰, through
#            SCREEN_DET alone (export/gradient_span.py; the other DETs get random columns): the directions a task's
#            loss first descends along, which the upstream tasks share where their solutions do not; gradientK: the
#            top K of them completed by random directions up to d;
#   fisher   seeded random directions through SCREEN_DET scaled per parameter by the RMS of those upstream gradients
#            (√ of the Fisher diagonal's estimate; `gradient_span.py --fisher`): random, but weighted toward the
#            parameters the upstream losses are sensitive to (through LoRA, B only: A gets no gradient at θ⁰);
# It chooses d, the learning rate and learned-vs-random on dev; the test column is printed for the record, not for
# choosing. The hybrid is rebuilt whenever stage 0 has finished more tasks (its line records how many it learned).
#
#   scripts/screen-d.sh DATA_DIR [TASK...]     # default tasks: trec tweet_offensive
#
# Resumable: one JSON line per (task, kind, d, lr, learned, det) in docs/results/screen-d.jsonl, and a line that is there
# is not run again. SCREEN_GRID="kind:d:lr ..." replaces the grid. DELTASPACE_RUNTIME_INTRA_THREADS sets ONNX
# Runtime's threads.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/screen-d.sh DATA_DIR [TASK...]}
shift
tasks=${*:-trec tweet_offensive}
det=${SCREEN_DET:-lora}
grid=${SCREEN_GRID:-random:16:0.05 random:64:0.05 random:256:0.05 random:1024:0.05 random:256:0.01 random:1024:0.01
  hybrid:64:0.05 hybrid:256:0.05 hybrid:1024:0.05 scaled:64:0.05 scaled:256:0.05 scaled:1024:0.05
  random:17:0.05 hybrid:17:0.05 refined:17:0.05}
model=models/all-MiniLM-L6-v2
upstream=$model/stage0/upstream
runs=runs/screen-d
results=docs/results/screen-d.jsonl
mkdir -p "$runs" "$(dirname "$results")"
touch "$results"
# Own copies of the binary, its configuration and the model, so a rebuild, an edit or a re-export
# cannot swap them mid-run.
. scripts/lib/long-run.sh
own_copies "$runs"
bin=("$runs/deltaspace" --config "$runs/deltaspace.toml")
# Upstream tasks with all three stage-0 solutions: the hybrid's learned directions.
learned=$(ls "$upstream"/*.prefix.safetensors 2>/dev/null | wc -l)
# complete D: the flag that completes the learned directions with random ones up to D (none at D = learned).
complete() { [ "$1" -gt "$learned" ] && echo "--complete-to $1" || true; }
for cell in $grid; do
  IFS=: read -r kind d lr <<< "$cell"
  case $kind in
    random)
      subspace=$runs/random-d$d.safetensors n=0
      [ -f "$subspace" ] || "${bin[@]}" subspace random --model "$runs/model" --dim "$d" --seed 7 --out "$subspace" >/dev/null ;;
    hybrid)
      subspace=$runs/hybrid-$learned-d$d.safetensors n=$learned
      [ -f "$subspace" ] || "${bin[@]}" train subspace --model "$runs/model" --solutions "$upstream" --dim "$learned" \
        --steps 0 $(complete "$d") --seed 7 --name "hybrid$learned-d$d" --out "$subspace" >/dev/null ;;
    scaled)
      subspace=$runs/scaled-$learned-d$d.safetensors n=$learned
      [ -f "$subspace" ] || "${bin[@]}" train subspace --model "$runs/model" --solutions "$upstream" --dim "$learned" \
        --steps 0 --unit-codes $(complete "$d") --seed 7 --name "scaled$learned-d$d" --out "$subspace" >/dev/null ;;
    gradient*)
      n=${kind#gradient} n=${n:-$d} subspace=runs/gradient/gradient$n-$det-d$d.safetensors
      [ -f "$subspace" ] || .venv-export/bin/python export/gradient_span.py --data "$data" --det "$det" \
        --subspace "$subspace" --dim "$d" --learned "$n" >/dev/null ;;
    fisher)
      n=0 subspace=runs/gradient/fisher-$det-d$d.safetensors
      [ -f "$subspace" ] || .venv-export/bin/python export/gradient_span.py --data "$data" --det "$det" --batches 64 \
        --fisher --subspace "$subspace" --dim "$d" >/dev/null ;;
    refined)
      steps=${SCREEN_REFINE_STEPS:-40}
      subspace=$runs/refined$steps-$learned-d$d.safetensors n=$learned
      [ -f "$subspace" ] || "${bin[@]}" train subspace --model "$runs/model" --solutions "$upstream" \
        --dim "$learned" --data-root "$data" --steps "$steps" --batch 4 --eval-every 10 --eval-limit 100 \
        $(complete "$d") --seed 7 --name "refined$steps-$learned-d$d" --out "$subspace" \
        | tail -1 >> docs/results/stage1-refine.jsonl ;;
  esac
  for t in $tasks; do
    key="\"task\":\"$t\",\"kind\":\"$kind\",\"d\":$d,\"lr\":$(python3 -c "print(float('$lr'))"),\"learned\":$n,\"det\":\"$det\","
    grep -qF "$key" "$results" && continue
    echo "== $t $kind d=$d lr=$lr learned=$n det=$det: $(date -u +%FT%TZ)"
    started=$SECONDS
    output=$("${bin[@]}" tune --model "$runs/model" --data "$data/$t" --shots 64 --seed 1 \
      --subspace "$subspace" --det "$det" --head prototypes --init normal --lr "$lr" --out "$runs/$t-$kind$n-d$d-lr$lr-$det.json" | tail -1)
    python3 -c 'import json, sys
out = json.loads(sys.argv[1])
task, kind, d, lr, learned, seconds = sys.argv[2:8]
line = {"task": task, "kind": kind, "d": int(d), "lr": float(lr), "learned": int(learned), "det": out.get("det"),
        "dev": out.get("dev"), "test": out.get("test"), "seconds": int(seconds)}
print(json.dumps(line, separators=(",", ":")))' "$output" "$t" "$kind" "$d" "$lr" "$n" "$((SECONDS - started))" >> "$results"
  done
done
echo "== screen-d: every line is in $results"
