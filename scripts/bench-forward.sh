#!/usr/bin/env bash
# CPU forward benchmark of the MiniLM export: ONNX Runtime (benches/forward.rs) against PyTorch eager
# (export/bench_torch.py) at the same shapes and thread count, then docs/EXPORT.md with the graph sizes, the export
# times, the forward table and the machine it ran on.
#   scripts/bench-forward.sh [--threads 2] [--rounds 12] [--shapes 32x64,1x64,8x64,64x16]
# Order: ORT (first half of the rounds), PyTorch (all rounds), ORT (second half); the two ORT passes are pooled, so a
# slow drift in machine load hits both engines. Raw JSON lines stay in bench-out/forward/ (git-ignored).
# Needs the export (models/all-MiniLM-L6-v2) and .venv-export (scripts/setup-export-venv.sh).
# 5–8 minutes on 2 busy cores (load 6–8) at the defaults, plus the first release build of the bench.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh
command="scripts/bench-forward.sh $*"
threads=2 rounds=12 shapes=32x64,1x64,8x64,64x16 model=models/all-MiniLM-L6-v2
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --shapes) shapes=$2; shift 2 ;;
    *) echo "usage: $0 [--threads N] [--rounds N] [--shapes BxS,...]" >&2; exit 2 ;;
  esac
done
if [ "$rounds" -lt 2 ]; then
  echo "--rounds must be at least 2 (the ORT rounds are split in two passes)" >&2
  exit 2
fi
python=.venv-export/bin/python
out=bench-out/forward
mkdir -p "$out" docs
rm -f "$out"/*

load() { echo "$1: $(load_average)" >> "$out/load.txt"; }
ort_pass() {
  cargo bench --quiet --bench forward -- --model "$model" --threads "$threads" --rounds "$1" --shapes "$shapes" \
    | tee "$out/ort-$2.txt"
}

cargo bench --quiet --bench forward --no-run  # build first, so no compile runs beside the timings
# The three busiest processes at the start, by name: what the benchmark shared the machine with.
busiest > "$out/busy.txt"
load "start"
ort_pass $((rounds - rounds / 2)) 1
load "after ORT pass 1"
"$python" export/bench_torch.py --model "$model" --threads "$threads" --rounds "$rounds" --shapes "$shapes" \
  | tee "$out/torch.txt"
load "after PyTorch"
ort_pass $((rounds / 2)) 2
load "end"

BENCH_COMMAND="$command" \
BENCH_MACHINE="$(machine)" \
BENCH_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" \
BENCH_COMMIT="$(revision)" \
BENCH_ORT="$(ort_library)" \
  "$python" - "$out" "$model" docs/EXPORT.md <<'PY'
"""Writes docs/EXPORT.md from the bench output in OUT and the export in MODEL."""
import json
import os
import statistics
import sys
from pathlib import Path

import onnx

out, model, doc = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
env = os.environ
manifest = json.loads((model / "manifest.json").read_text())


def records(*names):
    """JSON lines of the named files, samples pooled per (batch, seq, case)."""
    pooled = {}
    for name in names:
        for line in (out / name).read_text().splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                key = (r["batch"], r["seq"], r["case"])
                pooled.setdefault(key, {**r, "samples_ms": []})["samples_ms"] += r["samples_ms"]
    for r in pooled.values():
        r["median_ms"], r["min_ms"] = statistics.median(r["samples_ms"]), min(r["samples_ms"])
    return pooled


ort, torch = records("ort-1.txt", "ort-2.txt"), records("torch.txt")
any_torch = next(iter(torch.values()))
threads, d = any_torch["threads"], any_torch["d"]

lines = [
    "# The MiniLM export: graph sizes, export time, CPU forward time",
    "",
    f"Written by `{env['BENCH_COMMAND'].strip()}` (the exact command) on {env['BENCH_DATE']}, commit "
    f"{env['BENCH_COMMIT']}. Machine: {env['BENCH_MACHINE']}; ONNX Runtime {env['BENCH_ORT']}, "
    f"PyTorch {any_torch['torch']}. Rerun that command to refresh this file.",
    "",
    "**Load.** The machine was not idle: other work (for instance a training job) may have been running. The "
    "busiest processes at the start were: " + (out / "busy.txt").read_text().strip().rstrip(";") + ". Load "
    "average (1, 5, 15 min) from `uptime`:",
    "",
    *[f"- {line}" for line in (out / "load.txt").read_text().splitlines()],
    "",
    "## Graphs",
    "",
    f"From `{model}` as it is on disk; export seconds from `manifest.json` (`export.seconds`, torch "
    f"{manifest['export']['torch']}, opset {manifest['export']['opset']}).",
    "",
    "| graph | bytes | nodes | export (s) |",
    "|---|---|---|---|",
]
seconds = manifest["export"]["seconds"]
for graph, file in manifest["graphs"].items():
    path = model / file
    nodes = len(onnx.load(str(path)).graph.node)
    lines.append(f"| `{file}` | {path.stat().st_size:,} | {nodes:,} | {seconds[graph]} |")
lines += [
    f"| **all** | {sum((model / f).stat().st_size for f in manifest['graphs'].values()):,} | | "
    f"**{sum(seconds.values()):.1f}** |",
    "",
    f"## Forward, CPU, {threads} threads, d = {d}",
    "",
    "Full-length rows (every row is exactly seq tokens). Median (min) ms over "
    f"{len(next(iter(ort.values()))['samples_ms'])} interleaved rounds per engine; ×plain is the median against "
    "the same engine's plain forward in the same rounds; ORT / torch compares the two engines' medians (and, in "
    "brackets, their minimums, the runs least disturbed by other load).",
    "",
    "- `plain`: no DET plug points (ORT: plain.onnx; torch: `Bert.encode`).",
    "- `serve_one`: the serving graph, every row the same z and DET (LoRA) (ORT: serve.onnx; torch: "
    "`Bert.encode_z`).",
    "- `serve_mixed`: the serving graph, min(batch, 32) tasks per batch, each its own z, rows cycling LoRA, "
    "Adapter, Prefix.",
    "",
    "| batch × seq | case | ORT ms | ORT ×plain | torch ms | torch ×plain | ORT / torch (min) |",
    "|---|---|---|---|---|---|---|",
]
for key, o in ort.items():
    t = torch[key]
    o_plain, t_plain = ort[key[:2] + ("plain",)], torch[key[:2] + ("plain",)]
    lines.append(
        f"| {key[0]} × {key[1]} | {key[2]} | {o['median_ms']:.1f} ({o['min_ms']:.1f}) | "
        f"{o['median_ms'] / o_plain['median_ms']:.2f} | {t['median_ms']:.1f} ({t['min_ms']:.1f}) | "
        f"{t['median_ms'] / t_plain['median_ms']:.2f} | **{o['median_ms'] / t['median_ms']:.2f}** "
        f"({o['min_ms'] / t['min_ms']:.2f}) |"
    )
headline = [(k, o) for k, o in ort.items() if k[:2] == (32, 64)]
if headline:
    medians = [o["median_ms"] / torch[k]["median_ms"] for k, o in headline]
    minimums = [o["min_ms"] / torch[k]["min_ms"] for k, o in headline]
    lines += ["", "**At 32 × 64, ORT time / PyTorch time:** " + ", ".join(
        f"{k[2]} {a:.2f} (min {b:.2f})" for (k, _), a, b in zip(headline, medians, minimums)) + "."]
    if (max(medians) < 1) != (min(minimums) < 1) or (min(medians) < 1) != (max(minimums) < 1):
        lines += ["", "The medians and the minimums disagree on which engine is faster, so other load moved "
                  "this comparison more than the engines differ: rerun on an idle machine before quoting it."]
passes = records("ort-1.txt"), records("ort-2.txt")
lines += ["", "Drift: ORT's plain median in its pass before PyTorch → after PyTorch: " + "; ".join(
    f"{b} × {s} {passes[0][(b, s, c)]['median_ms']:.1f} → {passes[1][(b, s, c)]['median_ms']:.1f} ms"
    for b, s, c in ort if c == "plain") + "."]
lines += [
    "",
    "- ORT: the crate's own sessions (`Encoder`, CPU provider, graph optimisation level All, memory pattern off), "
    "timed around `Encoder::embed` / `embed_plain`, so input binding and output copies count.",
    "- PyTorch: eager `Bert` from `export/encoder.py` under `torch.inference_mode()`, `torch.set_num_threads` "
    "as above, on the weights the export was made from (checked by sha256); Python overhead counts.",
    "- Both run every DET op for every row (`det_select` only zeroes θ), so `serve_one` and `serve_mixed` do the "
    "same arithmetic: the gap between them shows the noise of this run.",
    "",
    "Speed figures are ratios within one run because the machine is noisy; the milliseconds only describe this "
    "run. No test asserts a timing. Raw JSON lines, with every sample, are in `bench-out/forward/` (git-ignored).",
    "",
]
doc.write_text("\n".join(lines))
print(f"wrote {doc}")
PY
