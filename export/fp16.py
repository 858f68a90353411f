"""Float16 variants of an exported model's serving graphs, for the GPU (docs/performance/gpu.md).

    python export/fp16.py --model models/all-MiniLM-L6-v2            # writes serve_fp16.onnx, plain_fp16.onnx there
    python export/fp16.py --model tests/fixtures/tiny --out-dir /tmp/tiny-fp16 --check

For each of serve.onnx and plain.onnx:
1. onnxruntime.transformers.optimizer (model_type bert, the manifest's heads and hidden size, GPU fusions): fuses
   LayerNorm (SkipLayerNormalization), Gelu and, where it recognises the pattern, attention. The serving graph's
   attention (16 prefix slots concatenated in front of K and V) is not a pattern it knows, so it stays unfused
   (docs/design/gpu.md); the script prints the fused-operator counts.
2. float16 conversion with the graph's inputs and outputs kept float32 (keep_io_types), so the Rust side feeds the
   same tensors. Kept in float32 (node_block_list / op_block_list):
   - the reconstruction θ_k = (base_k + z U_kᵀ) · det_select[:, k]: every node from the inputs z, U_*, base_*
     forward to the Mul by det_select (`--fp16-reconstruction` converts it too);
   - `--keep-fp32` op types, by default the final pooling and normalisation (ReduceSum, ReduceL2, Div after the
     last layer are cheap) — LayerNorm and Softmax run in float16 with float32 accumulation inside ORT's CUDA
     kernels, so they are not blocked unless `--keep-fp32` names them.
3. With `--check`: ONNX Runtime on the CPU runs the float32 and float16 graphs on the same random batch (rows
   cycling LoRA, Adapter, Prefix, none; z ~ N(0, 1), U ~ N(0, 0.05²/d), base = θ⁰) and prints the maximum
   absolute and relative difference of the embeddings and the worst cosine. float16 on the CPU is emulated by
   casts in some ops and may be slower than float32 there: only the GPU timings say anything about speed.

The written graphs keep every input and output name, type and shape of the originals.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

GRAPHS = ("serve", "plain")
DELTA_INPUTS_PREFIXES = ("U_", "base_")


def reconstruction_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute θ_k = (base_k + z U_kᵀ) · det_select[:, k]: everything reachable from z, U_*
    and base_* up to and including the first Mul that also takes a value derived from det_select."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    sources = [i.name for i in graph.input if i.name == "z" or i.name.startswith(DELTA_INPUTS_PREFIXES)]
    if not sources:
        return []
    # Values derived from det_select alone (its Slices / Gathers): the Mul that takes one of them ends θ.
    select_values = {"det_select"}
    for node in graph.node:
        if any(i in select_values for i in node.input) and node.op_type in ("Slice", "Gather", "Unsqueeze", "Reshape"):
            select_values.update(node.output)
    blocked: list[str] = []
    seen: set[str] = set()
    frontier = list(sources)
    while frontier:
        value = frontier.pop()
        for node in consumers.get(value, []):
            if node.name in seen:
                continue
            seen.add(node.name)
            blocked.append(node.name)
            if node.op_type == "Mul" and any(i in select_values for i in node.input):
                continue  # θ_k is complete here; what follows is the encoder itself
            if node.op_type not in ("Transpose", "MatMul", "Add", "Mul", "Gemm"):
                continue  # not part of the reconstruction: block it but do not follow it further
            frontier.extend(node.output)
    return blocked


def last_pooling_nodes(model: onnx.ModelProto, op_types: set[str]) -> list[str]:
    """Nodes of `op_types` after the last LayerNormalization (mean pooling and L2 normalisation)."""
    nodes = list(model.graph.node)
    last_ln = max((i for i, n in enumerate(nodes) if "LayerNorm" in n.op_type), default=-1)
    return [n.name for n in nodes[last_ln + 1 :] if n.op_type in op_types]


def convert(source: Path, target: Path, heads: int, hidden: int, args) -> dict:
    from onnxruntime.transformers import optimizer

    started = time.perf_counter()
    model = onnx.load(str(source))
    for i, node in enumerate(model.graph.node):  # the fp16 block lists go by node name
        if not node.name:
            node.name = f"node_{node.op_type}_{i}"
    if args.no_optimize:
        from onnxruntime.transformers.onnx_model import OnnxModel

        opt = OnnxModel(model)
        fused = {}
    else:
        opt = optimizer.optimize_model(
            model, model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0, use_gpu=True
        )
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    block_nodes = [] if args.fp16_reconstruction else reconstruction_nodes(opt.model)
    keep_ops = {op for op in args.keep_fp32.split(",") if op}
    pooling = last_pooling_nodes(opt.model, {"ReduceSum", "ReduceL2", "Div", "Clip", "Expand"})
    block_nodes += pooling
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    op_block = list(DEFAULT_OP_BLOCK_LIST) + sorted(keep_ops)
    opt.convert_float_to_float16(keep_io_types=True, node_block_list=block_nodes, op_block_list=op_block)
    out = opt.model
    # Same interface as the original: names, element types (float32 kept by keep_io_types), order.
    original = onnx.load(str(source), load_external_data=False)
    want = [(i.name, i.type.tensor_type.elem_type) for i in original.graph.input]
    have = [(i.name, i.type.tensor_type.elem_type) for i in out.graph.input]
    if want != have:
        raise SystemExit(f"{target.name}: inputs changed: {have} != {want}")
    if [o.name for o in original.graph.output] != [o.name for o in out.graph.output]:
        raise SystemExit(f"{target.name}: outputs changed")
    onnx.save(out, str(target))
    return {
        "graph": target.name,
        "bytes": target.stat().st_size,
        "nodes": len(out.graph.node),
        "fused": fused,
        "fp32_nodes_kept": len(block_nodes),
        "op_block_extra": sorted(keep_ops),
        "seconds": round(time.perf_counter() - started, 1),
    }


def check(model_dir: Path, graph32: Path, graph16: Path, manifest: dict, rows: int, seq: int, seed: int) -> dict:
    """Embeddings of the float32 and float16 graphs on one random mixed batch, ONNX Runtime on the CPU."""
    import onnxruntime as ort
    from safetensors.numpy import load_file

    rng = np.random.default_rng(seed)
    seq = min(seq, manifest["max_seq_len"])
    vocab = manifest["config"]["vocab_size"]
    ids = rng.integers(5, vocab, size=(rows, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101 if vocab > 1000 else 2, 102 if vocab > 1000 else 3
    mask = np.ones((rows, seq), dtype=np.int64)
    mask[1::3, seq // 2 :] = 0  # some padded rows
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    d = 16
    dets = [det["name"] for det in manifest["dets"]]
    if any(i.name == "z" for i in onnx.load(str(graph32), load_external_data=False).graph.input):
        theta0 = load_file(str(model_dir / manifest["theta0"]))
        feeds["z"] = rng.standard_normal((rows, d), dtype=np.float32)
        select = np.zeros((rows, len(dets)), dtype=np.float32)
        for r in range(rows):
            if r % (len(dets) + 1) < len(dets):
                select[r, r % (len(dets) + 1)] = 1.0
        feeds["det_select"] = select
        for det in dets:
            size = theta0[det].shape[0]
            feeds[f"U_{det}"] = (rng.standard_normal((size, d), dtype=np.float32) * 0.05 / np.sqrt(d)).astype(
                np.float32
            )
            feeds[f"base_{det}"] = theta0[det].astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    outputs = {}
    for label, path in (("fp32", graph32), ("fp16", graph16)):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        started = time.perf_counter()
        outputs[label] = session.run(["embeddings"], {k: v for k, v in feeds.items() if k in names})[0]
        outputs[label + "_ms"] = (time.perf_counter() - started) * 1e3
    a, b = outputs["fp16"].astype(np.float64), outputs["fp32"].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "graph": graph16.name,
        "rows": rows,
        "seq": seq,
        "nan": bool(np.isnan(a).any()),
        "max_abs": float(np.abs(a - b).max()),
        "max_rel": float(np.abs(a - b).max() / np.abs(b).max()),
        "min_cosine": float(cos.min()),
        "cpu_ms_fp32": round(outputs["fp32_ms"], 1),
        "cpu_ms_fp16": round(outputs["fp16_ms"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an exported model directory (manifest.json)")
    parser.add_argument("--out-dir", type=Path, help="where to write the fp16 graphs (default: the model directory)")
    parser.add_argument("--graphs", default=",".join(GRAPHS), help="which of serve,plain to convert")
    parser.add_argument("--suffix", default="_fp16", help="file name suffix: serve.onnx -> serve<suffix>.onnx")
    parser.add_argument("--keep-fp32", default="", help="comma-separated op types left in float32, e.g. Softmax")
    parser.add_argument("--fp16-reconstruction", action="store_true", help="convert θ = base + U z to fp16 too")
    parser.add_argument("--no-optimize", action="store_true", help="skip the transformers optimizer (plain cast)")
    parser.add_argument("--check", action="store_true", help="compare fp32 and fp16 embeddings on the CPU")
    parser.add_argument("--check-rows", type=int, default=8)
    parser.add_argument("--check-seq", type=int, default=64)
    args = parser.parse_args()

    manifest = json.loads((args.model / "manifest.json").read_text())
    out_dir = args.out_dir or args.model
    out_dir.mkdir(parents=True, exist_ok=True)
    heads, hidden = manifest["config"]["heads"], manifest["config"]["hidden"]
    for graph in [g for g in args.graphs.split(",") if g]:
        name = manifest["graphs"].get(graph)
        if not name:
            print(json.dumps({"graph": graph, "skipped": "not in the manifest"}))
            continue
        source = args.model / name
        target = out_dir / (Path(name).stem + args.suffix + ".onnx")
        print(json.dumps(convert(source, target, heads, hidden, args)), flush=True)
        if args.check:
            result = check(args.model, source, target, manifest, args.check_rows, args.check_seq, seed=7)
            print(json.dumps(result), flush=True)
            if result["nan"]:
                sys.exit(f"{target.name}: NaN in the float16 embeddings")


if __name__ == "__main__":
    main()
