#!/usr/bin/env bash
# Stage-2 time to target (issue #5): how long `deltaspace tune` takes to reach 95 % of the original-space DET's test
# accuracy (docs/results/original.jsonl), gradient (Adam) against derivative-free (CMA-ES), then
# docs/performance/tune.md with the command, the machine, the settings and a table per task.
#   scripts/bench-tune.sh DATA_DIR [--tasks mpqa,trec,tweet_offensive] [--det adapter] [--adam-steps 300]
#     [--cmaes-steps 120] [--adam-trace-every 15] [--cmaes-trace-every 6] [--lr 0.1] [--population 0]
#     [--sigma 1.0] [--batch 8] [--max-seq-len 64] [--threads 0]
#   scripts/bench-tune.sh --report-only   # rewrite the page from the last run's bench-out/tune/
# Both optimizers tune one task per run (so each run's seconds are that task's), from the same z₀ (same seed), in the
# default subspace, through the same DET, on the same training order, and are scored by `tune --trace` on the same
# test examples as the original-space DETs (the first 500 of at most 2,000). Tasks alternate Adam, CMA-ES, so a
# drift in machine load hits both. Trace seconds count optimizer steps only, never the scoring. Raw traces, tune
# results and the run's metadata stay in bench-out/tune/ (git-ignored). Needs a release build (DELTASPACE_BIN
# overrides target/release/deltaspace) and the MiniLM export. 15–25 minutes on 2 busy cores at the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh
out=bench-out/tune
original=docs/results/original.jsonl
# run_benchmark DATA_DIR [options]: the tune runs, their traces and metadata under $out.
run_benchmark() {
  # DATA_DIR by name, not by this machine's path: the page says what it held.
  command="scripts/bench-tune.sh DATA_DIR${2:+ ${*:2}}"
  usage="usage: $0 DATA_DIR [--tasks A,B] [--det D] [--adam-steps N] [--cmaes-steps N] [--adam-trace-every N]
  [--cmaes-trace-every N] [--lr X] [--population N] [--sigma X] [--batch N] [--max-seq-len N] [--threads N]
   or: $0 --report-only"
  data=${1:?$usage}
  shift
  tasks=mpqa,trec,tweet_offensive det=adapter adam_steps=300 cmaes_steps=120 adam_every=15 cmaes_every=6
  lr=0.1 population=0 sigma=1.0 batch=8 max_seq_len=64 threads=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --tasks) tasks=$2; shift 2 ;;
      --det) det=$2; shift 2 ;;
      --adam-steps) adam_steps=$2; shift 2 ;;
      --cmaes-steps) cmaes_steps=$2; shift 2 ;;
      --adam-trace-every) adam_every=$2; shift 2 ;;
      --cmaes-trace-every) cmaes_every=$2; shift 2 ;;
      --lr) lr=$2; shift 2 ;;
      --population) population=$2; shift 2 ;;
      --sigma) sigma=$2; shift 2 ;;
      --batch) batch=$2; shift 2 ;;
      --max-seq-len) max_seq_len=$2; shift 2 ;;
      --threads) threads=$2; shift 2 ;;
      *) echo "$usage" >&2; exit 2 ;;
    esac
  done
  bin=${DELTASPACE_BIN:-target/release/deltaspace}
  model=models/all-MiniLM-L6-v2
  subspace=$model/subspaces/default.safetensors
  test_limit=500 max_examples=2000 seed=42
  for t in ${tasks//,/ }; do
    [ -f "$data/$t/test.jsonl" ] || { echo "$data/$t is not a task directory" >&2; exit 2; }
  done
  [ -x "$bin" ] || { echo "$bin is missing: cargo build --release (or set DELTASPACE_BIN)" >&2; exit 2; }
  mkdir -p "$out"
  rm -rf "${out:?}"/*

  load() { echo "$1: $(load_average)" >> "$out/load.txt"; }
  # tune TASK OPTIMIZER STEPS TRACE_EVERY [flags]: one task, traced on the test subset of the original-space DETs.
  # Dev selection (--eval-every) runs once, at the end: the trace is what this measures.
  tune() {
    local task=$1 optimizer=$2 steps=$3 every=$4; shift 4
    echo "== $task $optimizer: $(date -u +%T)" >&2
    "$bin" tune --model "$model" --subspace "$subspace" --data "$data/$task" --det "$det" --head none --optimizer "$optimizer" \
      --steps "$steps" --batch "$batch" --eval-every "$steps" --eval-limit 150 --final-limit "$test_limit" \
      --max-examples "$max_examples" --max-seq-len "$max_seq_len" --seed "$seed" --threads "$threads" \
      --trace "$out/trace.jsonl" --trace-every "$every" --trace-split test --trace-limit "$test_limit" \
      --out "$out/tasks/$optimizer" "$@" >> "$out/results.jsonl"
  }

  # What the page reports about the run, taken before it starts (the tree can change while it runs).
  {
    printf 'BENCH_%s=%q\n' COMMAND "$command" DATE "$(date -u '+%Y-%m-%d %H:%M UTC')" \
      COMMIT "$(revision)" BIN "$bin" \
      SUBSPACE "$("$bin" subspace info "$subspace" | python3 -c 'import json, sys
s = json.load(sys.stdin); print(s["id"] + ", d = " + str(s["d"]))')" \
      MACHINE "$(machine)" \
      SETTINGS "$(printf '%s=%s ' tasks "$tasks" det "$det" adam_steps "$adam_steps" cmaes_steps "$cmaes_steps" \
        adam_every "$adam_every" cmaes_every "$cmaes_every" lr "$lr" population "$population" sigma "$sigma" \
        batch "$batch" max_seq_len "$max_seq_len" threads "$threads" test_limit "$test_limit" seed "$seed")"
  } > "$out/meta.env"
  # The three busiest processes at the start, by name: what the benchmark shared the machine with.
  busiest > "$out/busy.txt"
  load "start"
  started=$SECONDS
  for t in ${tasks//,/ }; do
    tune "$t" adam "$adam_steps" "$adam_every" --lr "$lr" --init normal
    load "after $t adam"
    tune "$t" cmaes "$cmaes_steps" "$cmaes_every" --population "$population" --sigma "$sigma"
    load "after $t cmaes"
  done
  printf 'BENCH_WALL=%q\n' "$((SECONDS - started))" >> "$out/meta.env"
}

if [ "${1:-}" != "--report-only" ]; then run_benchmark "$@"; fi

[ -f "$out/meta.env" ] || { echo "no run in $out: run the benchmark first" >&2; exit 2; }
mkdir -p docs/performance
set -a
# shellcheck source=/dev/null
. "$out/meta.env"
set +a
python3 - "$out" "$original" docs/performance/tune.md <<'PY'
"""Writes docs/performance/tune.md from the run in OUT (meta in the environment) and ORIGINAL's accuracies."""
import json
import os
import sys
from pathlib import Path

out, original_path, doc = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
env = os.environ
settings = dict(kv.split("=", 1) for kv in env["BENCH_SETTINGS"].split())
det, tasks, fraction = settings["det"], settings["tasks"].split(","), 0.95
names = {"adam": "Adam", "cmaes": "CMA-ES"}

original = {}
for line in original_path.read_text().splitlines():
    r = json.loads(line)
    original[(r["task"], r["det"])] = r
trace = [json.loads(l) for l in (out / "trace.jsonl").read_text().splitlines()]
results = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]


def points(task, optimizer):
    return sorted(
        (r for r in trace if r["task"] == task and r["optimizer"] == optimizer),
        key=lambda r: r["step"],
    )


def sec(s):
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def pct(p):
    return f"{100 * p['accuracy']:.1f} %"


class Run:
    """One optimizer on one task: the first scoring at or above the target, the one before it, the best."""

    def __init__(self, task, optimizer, target):
        self.points = points(task, optimizer)
        self.last = self.points[-1]
        self.best = max(self.points, key=lambda p: p["accuracy"])
        index = next((i for i, p in enumerate(self.points) if p["accuracy"] >= target), None)
        self.hit = None if index is None else self.points[index]
        self.before = None if not index else self.points[index - 1]

    def text(self):
        if self.hit is None:
            return (
                f"not reached in {self.last['step']} steps / {sec(self.last['seconds'])} "
                f"(best {pct(self.best)} at {sec(self.best['seconds'])}, step {self.best['step']})"
            )
        since = "" if self.before is None else f"; {pct(self.before)} at {sec(self.before['seconds'])}"
        return (
            f"**{sec(self.hit['seconds'])}**, step {self.hit['step']}, {self.hit['examples']:,} rows "
            f"({pct(self.hit)}{since})"
        )


rows, findings = [], []
for task in tasks:
    base = original.get((task, det))
    if base is None:
        rows.append(f"| {task} | no {det} result in {original_path} | | | | | |")
        continue
    target = fraction * base["accuracy"]
    adam, cma = Run(task, "adam", target), Run(task, "cmaes", target)
    n = adam.points[0]["n"]
    if n != base["n"]:
        findings.append(f"{task}: scored on {n} test examples, the original on {base['n']}: not comparable")
    if adam.hit and cma.hit:
        ratio = cma.hit["seconds"] / max(adam.hit["seconds"], 1e-9)
        # The target was crossed somewhere after the scoring before the hit: the ratio's range.
        low = (cma.before["seconds"] if cma.before else 0.0) / max(adam.hit["seconds"], 1e-9)
        high = cma.hit["seconds"] / max(adam.before["seconds"] if adam.before else 0.0, 1e-9)
        high_text = f"{high:.2f}" if adam.before else "∞"
        ratio_text = f"**{ratio:.2f}** ({low:.2f}–{high_text})"
        first = "Adam" if ratio > 1 else "CMA-ES"
        settled = low > 1 or high < 1
        findings.append(
            f"{task}: both reach {100 * target:.1f} %; {first} first at the scorings, "
            f"{max(ratio, 1 / ratio):.1f}× sooner"
            + ("" if settled else ", but the crossings' ranges overlap: within the scoring interval, a tie")
        )
    elif adam.hit or cma.hit:
        winner, loser = (adam, cma) if adam.hit else (cma, adam)
        bound = loser.last["seconds"] / max(winner.hit["seconds"], 1e-9)
        ratio_text = f"> {bound:.1f}" if adam.hit else f"< {1 / bound:.2f}"
        name = "Adam" if adam.hit else "CMA-ES"
        findings.append(f"{task}: only {name} reaches {100 * target:.1f} % ({sec(winner.hit['seconds'])})")
    else:
        ratio_text = "–"
        closer = max(("adam", adam), ("cmaes", cma), key=lambda r: r[1].best["accuracy"])
        findings.append(
            f"{task}: neither reaches {100 * target:.1f} %; closest {names[closer[0]]}, "
            f"{pct(closer[1].best)} at {sec(closer[1].best['seconds'])} "
            f"(Adam's best {pct(adam.best)} at {sec(adam.best['seconds'])}, "
            f"CMA-ES's {pct(cma.best)} at {sec(cma.best['seconds'])})"
        )
    rows.append(
        f"| {task} | {100 * base['accuracy']:.1f} (n = {base['n']}) | {100 * target:.1f} | "
        f"{100 * adam.points[0]['accuracy']:.1f} | {adam.text()} | {cma.text()} | {ratio_text} |"
    )

per_step, lambdas = {}, set()
for optimizer in ("adam", "cmaes"):
    lasts = [points(t, optimizer)[-1] for t in tasks if points(t, optimizer)]
    per_step[optimizer] = sum(p["seconds"] for p in lasts) / max(1, sum(p["step"] for p in lasts))
    if optimizer == "cmaes":
        lambdas = {p["evaluations"] // p["step"] for p in lasts if p["step"]}
lam = ", ".join(str(l) for l in sorted(lambdas)) or settings["population"]

finals = []
for task in tasks:
    for optimizer in ("adam", "cmaes"):
        r = next((r for r in results if r["task"] == task and r["optimizer"] == optimizer), None)
        if r:
            finals.append(
                f"| {task} | {names[optimizer]} | {100 * r['dev']['accuracy']:.1f} | {100 * r['test']['accuracy']:.1f} |"
            )

curves = []
for task in tasks:
    for optimizer in ("adam", "cmaes"):
        curve = ", ".join(f"{p['seconds']:.0f} s {100 * p['accuracy']:.1f}" for p in points(task, optimizer))
        curves.append(f"- {task}, {names[optimizer]}: {curve}")

load = "; ".join((out / "load.txt").read_text().strip().splitlines())
busy = (out / "busy.txt").read_text().strip().rstrip(";")
wall = int(env["BENCH_WALL"])
nl = "\n"
doc.write_text(
    f"""# Stage 2: time to 95 % of the original-space DET, Adam vs CMA-ES

How long `deltaspace tune` takes to bring a new task's z (the default subspace: {env.get('BENCH_SUBSPACE', 'not recorded')}) to 95 % of the test accuracy
of the same DET ({det}) trained in its original space ({original_path}), with exact gradients (Adam) and
derivative-free (CMA-ES). Written by

```bash
{env['BENCH_COMMAND']}
```

DATA_DIR is the directory of labeled tasks the project's experiments use (one folder per task, `train`, `dev`,
`test` JSON lines and `labels.json`; docs/RESULTS.md), the same data the original-space DETs were trained on.

- Date: {env['BENCH_DATE']}; commit {env['BENCH_COMMIT']}; binary `{env['BENCH_BIN']}`.
- Machine: {env['BENCH_MACHINE']}, ONNX Runtime on CPU, {settings['threads']} intra-op threads (0 = one per core).
  Load averages (1, 5, 15 min): {load}. Busiest processes at the start: {busy}. The cores were shared, so times are
  upper bounds; the ratios compare runs that alternated on the same machine.
- Whole benchmark: {wall // 60} min {wall % 60} s wall, scoring and model loading included.

## Settings

| | Adam | CMA-ES |
|---|---|---|
| steps (generations) | {settings['adam_steps']} | {settings['cmaes_steps']} |
| update | lr {settings['lr']}, exact d loss/d z through grad.onnx | population λ = {lam}, σ₀ = {settings['sigma']} |
| training rows per step | batch {settings['batch']} (forward + backward) | λ × batch {settings['batch']} (forward only, one run) |
| scored every | {settings['adam_every']} steps | {settings['cmaes_every']} generations |
| mean optimizer time per step | {per_step['adam']:.2f} s | {per_step['cmaes']:.2f} s |

Common: one task per run, z₀ ~ N(0, 0.02²) with seed {settings['seed']}, inputs truncated to {settings['max_seq_len']} tokens,
at most 2,000 examples per split, the same training order. Each scoring is of the current z (Adam's iterate,
CMA-ES's mean) on the first {settings['test_limit']} test examples, the subset {original_path} was scored on. Seconds are
optimizer time only (encoder runs on training rows, and updates), never the scoring.

## Time to 95 % of the original-space {det}

A time to target is the first scoring at or above it; the target was crossed after the scoring before it (given
after the semicolon), so the ratio's range in brackets runs from the earliest to the latest crossings possible.
Rows are training examples through the encoder (CMA-ES: λ candidates × batch, forward only; Adam: forward and
backward), a count that does not depend on the machine's load.

| task | original-space {det}, test % | target | z₀ | Adam: time to target | CMA-ES: time to target | CMA-ES time / Adam time |
|---|---|---|---|---|---|---|
{nl.join(rows)}

{nl.join('- ' + f for f in findings)}

One seed, one run per optimizer and task: the curves below show how much single scorings move (Adam's iterate at
this learning rate, and CMA-ES's mean ranked on {settings['batch']} examples per generation, both go up and down), so a
first crossing is a noisy measure; read the ranges, not the ratio's digits.

## The z each run wrote (dev selection at the last step only), %

| task | optimizer | dev (≤ 500) | test (≤ 500) |
|---|---|---|---|
{nl.join(finals)}

## Curves (optimizer seconds, test accuracy %)

{nl.join(curves)}

Raw traces: `bench-out/tune/trace.jsonl` (a line per task and scoring: task, det, optimizer, step, seconds,
evaluations, examples, split, n, accuracy, macro_f1); tune results: `bench-out/tune/results.jsonl`; the run's
metadata: `bench-out/tune/meta.env`.
"""
)
print(f"wrote {doc}")
PY
