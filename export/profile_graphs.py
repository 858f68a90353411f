"""Where the serving graph's extra time over the plain graph goes, by ONNX op type (docs/PERFORMANCE.md).

    .venv-export/bin/python export/profile_graphs.py [--model models/all-MiniLM-L6-v2] [--shape 32x64] [--runs 12]
        [--threads 2] [--out docs/performance/serve-overhead.md]

Runs plain.onnx and serve.onnx alternately on the same full-length random rows with ONNX Runtime's own profiler
(the engine the Rust crate loads, same version, graph optimisation level All, memory pattern off), sums each node's
kernel time by op type over the runs after a warm-up, and prints (or writes) a table: ms per run of each op type in
each graph and the difference. The serving graph gets 32 tasks per batch (d = 16, random z and U) with rows cycling
LoRA, Adapter and Prefix; which DETs a row uses does not change its cost, since every DET branch runs for every row.
"""

import argparse
import json
import os
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path: Path, threads: int, profile_dir: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = False
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(profile_dir, path.stem)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def by_op_type(profile: str, warmup_runs: int) -> tuple[dict[str, float], list[float]]:
    """Kernel microseconds by op type over the runs after the warm-up, and each run's wall microseconds."""
    events = json.loads(Path(profile).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    keep_from = runs[warmup_runs]["ts"] if len(runs) > warmup_runs else 0
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= keep_from:
            totals[event["args"]["op_name"]] += event["dur"]
    return totals, [r["dur"] for r in runs[warmup_runs:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/all-MiniLM-L6-v2"))
    parser.add_argument("--shape", default="32x64")
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    batch, seq = map(int, args.shape.split("x"))
    manifest = json.loads((args.model / "manifest.json").read_text())
    rng = np.random.default_rng(7)
    ids = rng.integers(1000, 30000, size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    tokens = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    serve_inputs = dict(tokens)
    serve_inputs["z"] = rng.standard_normal((batch, args.d)).astype(np.float32)
    serve_inputs["det_select"] = np.eye(len(manifest["dets"]), dtype=np.float32)[np.arange(batch) % 3]
    for det in manifest["dets"]:
        serve_inputs[f"U_{det['name']}"] = (rng.standard_normal((det["size"], args.d)) * 2e-3).astype(np.float32)
        serve_inputs[f"base_{det['name']}"] = (rng.standard_normal(det["size"]) * 2e-2).astype(np.float32)

    with tempfile.TemporaryDirectory() as profile_dir:
        plain = session(args.model / manifest["graphs"]["plain"], args.threads, profile_dir)
        serve = session(args.model / manifest["graphs"]["serve"], args.threads, profile_dir)
        for _ in range(args.warmup + args.runs):  # alternate, so load from elsewhere hits both alike
            plain.run(None, tokens)
            serve.run(None, serve_inputs)
        plain_ops, plain_runs = by_op_type(plain.end_profiling(), args.warmup)
        serve_ops, serve_runs = by_op_type(serve.end_profiling(), args.warmup)

    per_run = lambda us: us / args.runs / 1e3  # noqa: E731  microseconds over all runs -> ms per run
    plain_ms, serve_ms = statistics.median(plain_runs) / 1e3, statistics.median(serve_runs) / 1e3
    rows = sorted(set(plain_ops) | set(serve_ops), key=lambda op: serve_ops.get(op, 0) - plain_ops.get(op, 0),
                  reverse=True)
    plain_kernels, serve_kernels = per_run(sum(plain_ops.values())), per_run(sum(serve_ops.values()))
    extra = serve_kernels - plain_kernels
    lines = [
        f"Shape {batch} × {seq}, {args.threads} threads, {args.runs} runs after {args.warmup} warm-up, ONNX Runtime "
        f"{ort.__version__} (Python, CPU). Kernel time per run: plain {plain_kernels:.1f} ms, serve "
        f"{serve_kernels:.1f} ms (throughput ×{plain_kernels / serve_kernels:.2f} of plain; median wall time per run "
        f"{plain_ms:.1f} and {serve_ms:.1f} ms). The serving graph's extra {extra:.1f} ms by op type (kernel time "
        "per run, summed over the op type's nodes):",
        "",
        "| op type | plain ms/run | serve ms/run | serve − plain | share of the extra |",
        "|---|---|---|---|---|",
    ]
    for op in rows:
        a, b = per_run(plain_ops.get(op, 0.0)), per_run(serve_ops.get(op, 0.0))
        if max(a, b) < 0.05:
            continue
        share = f"{(b - a) / extra:.0%}" if extra > 0 else "–"
        lines.append(f"| {op} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {share} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        header = (
            "# The serving graph's extra time over the plain graph, by op type\n\n"
            f"Written by `.venv-export/bin/python export/profile_graphs.py --shape {args.shape} --out {args.out}`.\n\n"
        )
        args.out.write_text(header + text)


if __name__ == "__main__":
    main()
