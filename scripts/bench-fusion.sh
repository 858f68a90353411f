#!/usr/bin/env bash
# Whether ONNX Runtime's fused CPU kernels (MultiHeadAttention, BiasGelu) would speed up the MiniLM graphs
# (issue 14): export/bench_fusion.py rewrites plain.onnx with them and times each rewrite against the graph as
# exported, interleaved, in one process; then docs/performance/fusion.md.
#   scripts/bench-fusion.sh [--threads 1,2] [--rounds 30]
# Needs the export (models/all-MiniLM-L6-v2) and .venv-export. About 2 minutes on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh
command="scripts/bench-fusion.sh $*"
out=bench-out/fusion
mkdir -p "$out" docs/performance
start_load=$(load_average)
.venv-export/bin/python export/bench_fusion.py --out "$out" "$@" | tee "$out/lines.jsonl"
BENCH_COMMAND="$command" BENCH_MACHINE="$(machine)" BENCH_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" \
BENCH_COMMIT="$(revision)" BENCH_ORT="$(.venv-export/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)')" \
BENCH_LOAD="$start_load → $(load_average)" \
  .venv-export/bin/python - "$out/lines.jsonl" docs/performance/fusion.md <<'PY'
"""Writes docs/performance/fusion.md from export/bench_fusion.py's JSON lines."""
import json
import os
import sys
from pathlib import Path

lines = [json.loads(l) for l in Path(sys.argv[1]).read_text().splitlines() if l.startswith("{")]
env = os.environ
ops = next(l["ort_optimized_ops"] for l in lines if "ort_optimized_ops" in l)
timed = [l for l in lines if "graph" in l]
graphs = list(dict.fromkeys(l["graph"] for l in timed))
cell = {(l["threads"], l["shape"], l["graph"]): l for l in timed}
doc = [
    "# Fused attention and GELU on the CPU (issue 14)",
    "",
    "Would ONNX Runtime's fused CPU kernels make the MiniLM graphs faster? `export/bench_fusion.py` rewrites the "
    "exported `plain.onnx` with its contrib ops (each layer's attention core as one `com.microsoft."
    "MultiHeadAttention`, each feed-forward bias add and GELU as one `com.microsoft.BiasGelu`) and times every "
    "rewrite against the graph as exported, in one process, rounds interleaved in rotating order (Python "
    "onnxruntime, the same library version the server loads; graph optimization level All, as the server runs it; "
    "no spinning threads, since four sessions share the cores).",
    "",
    f"Written by `{env['BENCH_COMMAND'].strip()}` on {env['BENCH_DATE']}, commit {env['BENCH_COMMIT']}. Machine: "
    f"{env['BENCH_MACHINE']}; onnxruntime {env['BENCH_ORT']}; load average {env['BENCH_LOAD']}.",
    "",
    "What ORT's own optimizer makes of the graph as exported (op counts after level All): "
    + ", ".join(f"{op} {n}" for op, n in ops.items()) + ". It fuses the layer norms (SkipLayerNormalization) and "
    "the scaled QKᵀ (FusedMatMul), not the attention block nor the GELU.",
    "",
    "Throughput of each graph as a multiple of the graph as exported (median ms of the graph as exported ÷ the "
    "rewrite's median ms; above 1 is faster); max |difference| of the embeddings in brackets:",
    "",
    "| threads | batch × seq | as exported, ms | " + " | ".join(g for g in graphs if g != "as exported") + " |",
    "|---|---|---|" + "---|" * (len(graphs) - 1),
]
for threads, shape in dict.fromkeys((l["threads"], l["shape"]) for l in timed):
    base = cell[threads, shape, "as exported"]["median_ms"]
    doc.append(f"| {threads} | {shape} | {base:.1f} | " + " | ".join(
        f"{base / cell[threads, shape, g]['median_ms']:.2f} ({cell[threads, shape, g]['max_abs_diff']:.0e})"
        for g in graphs if g != "as exported") + " |")
doc += [
    "",
    "Rows are random token ids of length 64, half of each batch padded to 32. No test asserts a timing; the "
    "rewritten graphs stay in `bench-out/fusion/` (git-ignored).",
    "",
]
Path(sys.argv[2]).write_text("\n".join(doc))
print(f"wrote {sys.argv[2]}")
PY
