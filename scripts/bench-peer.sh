#!/usr/bin/env bash
# The peer comparison of issue #5: deltaspace (benches/peer.rs) against what a user would otherwise run,
# sentence-transformers all-MiniLM-L6-v2 in PyTorch with one PEFT LoRA adapter per task (export/bench_peer.py),
# serving the same batches of 32 tasks from texts to labels; then docs/performance/peer.md.
#   scripts/bench-peer.sh [--threads 2] [--rounds 6] [--batch-sizes 1,8,32]
# --threads takes a list (e.g. 1,2): each thread count runs in turn, with the same order.
# Order: the workload (bench-out/peer/tasks.json, batches.jsonl), deltaspace (first half of the rounds), the PEFT
# peer (all rounds), deltaspace (second half); the two deltaspace passes are pooled, so a slow drift in machine
# load hits both sides. Raw JSON lines stay in bench-out/peer/ (git-ignored).
# Needs the export (models/all-MiniLM-L6-v2) and .venv-export (scripts/setup-export-venv.sh); installs
# export/requirements-bench.txt (peft) into that venv when missing.
# About 10 minutes on 2 busy cores (load 4-8) at the defaults, plus the first release build of the bench; each
# further thread count adds as much, batch size 128 (--batch-sizes 1,8,32,128) about as much again.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh
command="scripts/bench-peer.sh $*"
threads=2 rounds=6 batch_sizes=1,8,32 model=models/all-MiniLM-L6-v2
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --batch-sizes) batch_sizes=$2; shift 2 ;;
    *) echo "usage: $0 [--threads N,...] [--rounds N] [--batch-sizes B,...]" >&2; exit 2 ;;
  esac
done
if [ "$rounds" -lt 2 ]; then
  echo "--rounds must be at least 2 (the deltaspace rounds are split in two passes)" >&2
  exit 2
fi
venv=.venv-export
python=$venv/bin/python
if [ ! -x "$python" ] || [ ! -f "$model/serve.onnx" ]; then
  echo "needs $venv (scripts/setup-export-venv.sh) and the export in $model (scripts/run-main.sh makes both)" >&2
  exit 2
fi
stamp="$venv/.requirements-bench.sha256"
want=$(sha256sum export/requirements-bench.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r export/requirements-bench.txt
  echo "$want" > "$stamp"
fi
out=bench-out/peer
mkdir -p "$out" docs/performance
rm -f "$out"/*

load() { echo "$1: $(load_average)" >> "$out/load.txt"; }
# deltaspace_pass THREADS ROUNDS PASS
deltaspace_pass() {
  cargo bench --quiet --bench peer -- --model "$model" --batches "$out" --threads "$1" --rounds "$2" \
    | tee "$out/deltaspace-t$1-$3.txt"
}

cargo bench --quiet --bench peer --no-run  # build first, so no compile runs beside the timings
"$python" export/bench_peer.py write-batches --out "$out" --batch-sizes "$batch_sizes"
# The three busiest processes at the start, by name: what the benchmark shared the machine with.
busiest > "$out/busy.txt"
for t in ${threads//,/ }; do
  load "threads $t, start"
  deltaspace_pass "$t" $((rounds - rounds / 2)) 1
  load "threads $t, after deltaspace pass 1"
  "$python" export/bench_peer.py run --batches "$out" --threads "$t" --rounds "$rounds" | tee "$out/peft-t$t.txt"
  load "threads $t, after the PEFT peer"
  deltaspace_pass "$t" $((rounds / 2)) 2
  load "threads $t, end"
done

BENCH_COMMAND="$command" \
BENCH_MACHINE="$(machine) (nproc)" \
BENCH_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" \
BENCH_COMMIT="$(revision)" \
BENCH_ORT="$(ort_library)" \
  "$python" - "$out" docs/performance/peer.md <<'PY'
"""Writes docs/performance/peer.md from the bench output in OUT."""
import json
import os
import statistics
import sys
from pathlib import Path

out, doc = Path(sys.argv[1]), Path(sys.argv[2])
env = os.environ


def records(*names):
    """JSON lines of the named files, samples pooled per (batch size, case)."""
    pooled = {}
    for name in names:
        for line in (out / name).read_text().splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                key = (r["batch"], r["case"])
                pooled.setdefault(key, {**r, "samples_ms": []})["samples_ms"] += r["samples_ms"]
    for r in pooled.values():
        r["median_ms"], r["min_ms"] = statistics.median(r["samples_ms"]), min(r["samples_ms"])
        r["median_seq_s"], r["best_seq_s"] = r["rows"] * 1e3 / r["median_ms"], r["rows"] * 1e3 / r["min_ms"]
    return pooled


def by_threads(side):
    """Records of SIDE's files (SIDE-tTHREADS[-PASS].txt), passes pooled, keyed by (threads, batch size, case)."""
    files = {}
    for path in sorted(out.glob(f"{side}-t*.txt")):
        files.setdefault(int(path.stem.split("-t")[1].split("-")[0]), []).append(path.name)
    return {(t, size, case): r for t, names in files.items() for (size, case), r in records(*names).items()}


ours, peer = by_threads("deltaspace"), by_threads("peft")
any_ours, any_peer = next(iter(ours.values())), next(iter(peer.values()))
thread_counts = sorted({t for t, _, _ in ours})
sizes = sorted({size for _, size, _ in ours})
threads_text = ", ".join(map(str, thread_counts))
# (deltaspace case, its description, PEFT case, its description)
COMPARISONS = [
    ("mixed_lap", "32 tasks mixed, rows cycling LoRA/Adapter/Prefix", "peft_mixed", "mixed `adapter_names`"),
    ("mixed_lap", "32 tasks mixed, L/A/P", "peft_mixed_grouped",
     "mixed `adapter_names`, split by length as deltaspace splits"),
    ("mixed_lora", "32 tasks mixed, all LoRA", "peft_mixed", "mixed `adapter_names`"),
    ("one_task", "one task per batch (LoRA)", "peft_one", "one adapter per batch (`set_adapter`)"),
    ("mixed_lap", "32 tasks mixed, L/A/P", "peft_one", "one adapter per batch (its best case)"),
    ("frozen_plain", "no task: the frozen model, plain graph, split by length", "frozen_grouped",
     "the frozen model (a copy PEFT never wrapped), split by length as deltaspace splits"),
]


def ratios(a, b):
    return a["median_seq_s"] / b["median_seq_s"], a["best_seq_s"] / b["best_seq_s"]


lines = [
    "# deltaspace vs PyTorch + PEFT LoRA: many classifiers on one MiniLM",
    "",
    "The peer comparison of issue #5 (Performance): the same batches of 32 tasks, from texts to labels, served by "
    "deltaspace and by what a user would otherwise run, sentence-transformers all-MiniLM-L6-v2 in PyTorch with one "
    "PEFT LoRA adapter per task. Goal: at least 2× the peer's throughput.",
    "",
    f"Written by `{env['BENCH_COMMAND'].strip()}` (the exact command) on {env['BENCH_DATE']}, commit "
    f"{env['BENCH_COMMIT']}. Machine: {env['BENCH_MACHINE']}. deltaspace: ONNX Runtime {env['BENCH_ORT']}; peer: "
    f"PyTorch {any_peer['torch']}, transformers {any_peer['transformers']}, PEFT {any_peer['peft']}, "
    f"sentence-transformers {any_peer['sentence_transformers']}. Rerun that command to refresh this file.",
    "",
    "**Load.** The machine may have been shared with other work (builds, training). The busiest processes at the "
    "start were: " + (out / "busy.txt").read_text().strip().rstrip(";") + ". Load average (1, 5, 15 min) from "
    "`uptime`:",
    "",
    *[f"- {line}" for line in (out / "load.txt").read_text().splitlines()],
    "",
    "## Workload",
    "",
    "One deterministic list of batches (`bench-out/peer/batches.jsonl`, written by `export/bench_peer.py "
    "write-batches`), read by both sides. 32 tasks: task t has the labels of the committed example task number "
    "t mod 6 (`models/all-MiniLM-L6-v2/tasks/*.json`: 2 to 6 labels each). Row i is of task i mod 32; its text is "
    "the next sentence pair of `tests/fixtures/data/rte` when its task's labels are a pair task's (mrpc, rte), "
    "else the next sentence of `tests/fixtures/data/sst2`. For batch size B, the first max(B, 32) rows of that "
    "stream are cut into batches of B; one sample is the wall time to serve all of them once, so sequences/s = "
    "rows / sample time. Each batch is served from its texts to each row's label: tokenization, one forward, "
    "pooling, scoring against the row's task, all inside the timer.",
    "",
    "## Settings",
    "",
    "| | deltaspace (`benches/peer.rs`) | peer (`export/bench_peer.py`) |",
    "|---|---|---|",
    f"| threads | ONNX Runtime intra-op {threads_text}, one session | `torch.set_num_threads` {threads_text} |",
    "| engine | ONNX Runtime CPU provider, graph optimisation level All, memory pattern off; `serve.onnx` (`plain.onnx` for `frozen_plain`) | "
    f"PyTorch eager, `torch.inference_mode()`, attention `{any_peer['attention']}` |",
    "| dtype | float32 | float32 |",
    "| tokenization | the model's tokenizer (Rust `tokenizers`), pairs as pairs, truncation longest-first at 256 "
    "| the model's tokenizer (`tokenizers` through transformers), the same truncation (`max_seq_length` 256) |",
    "| padding | `classifier::embed_tokens` splits a batch into runs of like length (`length_groups`: fewest padded "
    "tokens plus 32 tokens a run) and pads each run to its longest row | `peft_mixed`, `peft_one`: the batch padded "
    "to its longest row, as `model(**tokenizer(batch, padding=True))` does; `peft_mixed_grouped`: split exactly as "
    "deltaspace splits |",
    "| pooling | mean over real tokens, L2-normalized, inside the graph | sentence-transformers' own Pooling (mean) "
    "and Normalize modules |",
    f"| tasks | z (d = {any_ours['d']}) in the committed subspace `{any_ours['subspace']}`; θ = base + U z rebuilt "
    "in the graph per row (from d = 64 up, from each task's U z kept in a `DeltaCache` of 64 MiB, as the server "
    "does) | 32 PEFT LoRA adapters (r = 8, alpha 16, query and value, random non-zero A and B) on "
    "the sentence-transformers model's BertModel (`get_peft_model`, `add_adapter`) |",
    "| how a batch picks its tasks | each row's z and one-hot DET are graph inputs: no switching | mixed: "
    "`adapter_names=[...]` per row in forward (PEFT's mixed-adapter batch inference); one: `set_adapter` when the "
    "task changes, then a plain forward |",
    "| scoring | `classifier::score` per row: softmax(20 cos) against the task's label-description embeddings, "
    "computed once by the frozen model | the same, in torch; label embeddings computed once with adapters disabled |",
    "",
    "deltaspace also decodes Adapter and Prefix rows in the same batch (`mixed_lap`); PEFT's mixed-adapter "
    "inference supports LoRA only, so its rows are all LoRA.",
    "",
    "## Throughput",
    "",
    f"Sequences/s, median (best) over {len(any_ours['samples_ms'])} deltaspace samples (two passes, before and "
    f"after the peer) and {len(any_peer['samples_ms'])} peer samples per thread count; each side's rounds rotate "
    "its cases. Ratio: deltaspace / peer throughput, of the medians and of the best samples (the runs least "
    "disturbed by other load).",
]
headline = []
for size in sizes:
    r = ours[thread_counts[0], size, "mixed_lap"]
    lines += [
        "",
        f"### Batch size {size} ({r['rows']} rows in {r['batches']} batches)",
        "",
        "| threads | deltaspace | seq/s | peer (PEFT) | seq/s | ratio (median) | ratio (best) |",
        "|---|---|---|---|---|---|---|",
    ]
    for threads in thread_counts:
        for ours_case, ours_text, peer_case, peer_text in COMPARISONS:
            a, b = ours[threads, size, ours_case], peer[threads, size, peer_case]
            median, best = ratios(a, b)
            lines.append(
                f"| {threads} | {ours_text} (`{ours_case}`) | {a['median_seq_s']:.1f} ({a['best_seq_s']:.1f}) | "
                f"{peer_text} (`{peer_case}`) | {b['median_seq_s']:.1f} ({b['best_seq_s']:.1f}) | "
                f"**{median:.2f}×** | {best:.2f}× |"
            )
        headline.append((threads, size, *ratios(ours[threads, size, "mixed_lap"], peer[threads, size, "peft_mixed"]),
                         *ratios(ours[threads, size, "one_task"], peer[threads, size, "peft_one"]),
                         *ratios(ours[threads, size, "mixed_lap"], peer[threads, size, "peft_mixed_grouped"]),
                         *ratios(ours[threads, size, "frozen_plain"], peer[threads, size, "frozen_grouped"])))

lines += ["", "## Against the goal (≥ 2× the peer's throughput)", ""]
for threads, size, mixed, mixed_best, one, one_best, grouped, grouped_best, floor, floor_best in sorted(headline):
    verdict = "met" if min(mixed, mixed_best) >= 2 else "not met" if max(mixed, mixed_best) < 2 else "unclear"
    lines.append(
        f"- threads {threads}, batch size {size}: 32 tasks mixed {mixed:.2f}× (best {mixed_best:.2f}×), one task "
        f"per batch {one:.2f}× (best {one_best:.2f}×): goal {verdict} for mixed batches. Against the peer split by "
        f"length as deltaspace splits (equal work): {grouped:.2f}× (best {grouped_best:.2f}×). The engines alone "
        f"(both frozen, no task): {floor:.2f}× (best {floor_best:.2f}×), the ceiling of the equal-work ratio."
    )
unclear = [f"threads {t}, batch size {size}" for t, size, mixed, mixed_best, *_ in sorted(headline)
           if (mixed >= 2) != (mixed_best >= 2)]
if unclear:
    lines += ["", "At " + "; ".join(unclear) + " the medians and the best samples disagree on the goal, so other "
              "load moved this comparison: rerun on an idle machine before quoting it."]
lines += ["", "Drift: deltaspace's `mixed_lap` median in its pass before the peer → after the peer: " + "; ".join(
    f"threads {t}, batch {size} {first[size, 'mixed_lap']['median_ms']:.0f} → "
    f"{second[size, 'mixed_lap']['median_ms']:.0f} ms"
    for t in thread_counts
    for first, second in [(records(f"deltaspace-t{t}-1.txt"), records(f"deltaspace-t{t}-2.txt"))]
    for size in sizes) + "."]
lines += [
    "",
    "Threads: with as many threads per side as the machine has cores, a machine shared with other work "
    "deschedules one of a side's threads now and then, and every thread of a parallel op waits for it; how long "
    "depends on the thread pool (ONNX Runtime's own, PyTorch's OpenMP) as much as on the engine. A run with "
    "`--threads 1,2` shows how much of a ratio comes from that.",
    "",
    "Speed figures are ratios within one run because the machine is noisy; the sequences/s only describe this run. "
    "No test asserts a timing. Raw JSON lines, with every sample, are in `bench-out/peer/` (git-ignored).",
    "",
]
doc.write_text("\n".join(lines))
print(f"wrote {doc}")
PY
