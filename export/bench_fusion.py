"""What ONNX Runtime's fused CPU kernels would give the MiniLM graphs (issue 14): rewrites the exported plain graph
with ORT's contrib ops and times each rewrite against the graph as exported, in the same process and rounds.

    .venv-export/bin/python export/bench_fusion.py [--model models/all-MiniLM-L6-v2] [--threads 1,2] [--rounds 30]

Rewrites (each a copy of plain.onnx, written under bench-out/fusion/):
- mha: each layer's attention core (Q, K, V reshaped to heads, QKᵀ/√h + mask, softmax, ·V, heads merged) becomes one
  com.microsoft.MultiHeadAttention with the attention mask as its key padding mask;
- gelu: each feed-forward GELU with the bias add before it (x/√2, Erf, +1, ·0.5, ·x) becomes com.microsoft.BiasGelu;
- both.
ORT's own graph optimizer (level All, as the Rust side runs it) fuses neither pattern in these exported graphs: it
leaves MatMul/Softmax and Erf in place (scripts/bench-fusion.sh prints what it fused). Every rewrite must embed as the
original does (max |difference| printed; rows are real tokens with some padding). Prints one JSON line per
(threads, shape, graph): median ms over interleaved rounds. Nothing here asserts a timing.
"""

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

SHAPES = ((1, 64), (8, 64), (32, 64))
HEADS = 12  # all-MiniLM-L6-v2


def wiring(nodes):
    """Who produces each value, and who consumes it."""
    producer = {out: n for n in nodes for out in n.output}
    consumers = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    return producer, consumers


def fuse_attention(graph) -> int:
    """Softmax(QKᵀ/√h + mask)·V with its head reshapes → MultiHeadAttention; returns how many."""
    nodes = list(graph.node)
    producer, consumers = wiring(nodes)
    mask = helper.make_node("Cast", ["attention_mask"], ["key_padding_mask"], to=TensorProto.INT32)
    replaced, dropped = {}, set()
    for softmax in (n for n in nodes if n.op_type == "Softmax"):
        add = producer[softmax.input[0]]
        div = producer[add.input[0]]
        scores = producer[div.input[0]]
        q_heads, k_heads = producer[scores.input[0]], producer[scores.input[1]]
        q_split, k_split = producer[q_heads.input[0]], producer[k_heads.input[0]]
        weighted = consumers[softmax.output[0]][0]
        v_heads = producer[weighted.input[1]]
        v_split = producer[v_heads.input[0]]
        merged = consumers[weighted.output[0]][0]
        merge = consumers[merged.output[0]][0]
        core = (add, div, scores, q_heads, k_heads, q_split, k_split, softmax, weighted, v_heads, v_split, merged,
                merge)
        dropped.update(id(n) for n in core)
        replaced[id(merge)] = helper.make_node(
            "MultiHeadAttention", [q_split.input[0], k_split.input[0], v_split.input[0], "", "key_padding_mask"],
            [merge.output[0]], domain="com.microsoft", num_heads=HEADS)
    rewritten = [mask] + [replaced.get(id(n), n) for n in nodes if id(n) in replaced or id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(rewritten)
    return len(replaced)


def fuse_gelu(graph) -> int:
    """Add(x W, b) then x·0.5·(1 + erf(x/√2)) → BiasGelu(x W, b); returns how many."""
    nodes = list(graph.node)
    producer, consumers = wiring(nodes)
    replaced, dropped = {}, set()
    for erf in (n for n in nodes if n.op_type == "Erf"):
        scale = producer[erf.input[0]]
        x = scale.input[0]
        plus_one = consumers[erf.output[0]][0]
        half = consumers[plus_one.output[0]][0]
        gelu = consumers[half.output[0]][0]
        bias_add = producer[x]
        if gelu.op_type != "Mul" or x not in gelu.input or bias_add.op_type != "Add":
            raise SystemExit(f"unexpected GELU pattern at {erf.name}")
        dropped.update(id(n) for n in (scale, erf, plus_one, half, gelu, bias_add))
        replaced[id(gelu)] = helper.make_node("BiasGelu", list(bias_add.input), [gelu.output[0]],
                                              domain="com.microsoft")
    rewritten = [replaced.get(id(n), n) for n in nodes if id(n) in replaced or id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(rewritten)
    return len(replaced)


def rewrite(plain: Path, out: Path, kinds: tuple[str, ...]) -> Path:
    model = onnx.load(str(plain))
    counts = {kind: {"mha": fuse_attention, "gelu": fuse_gelu}[kind](model.graph) for kind in kinds}
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path = out / f"plain_{'_'.join(kinds)}.onnx"
    onnx.save(model, str(path))
    print(f"{path.name}: {counts}", file=sys.stderr)
    return path


def session(path: Path, threads: int, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Four sessions live side by side here; threads that spin after a run would steal the cores of the next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(rng) -> dict:
    out = {}
    for rows, seq in SHAPES:
        ids = rng.integers(1000, 20000, (rows, seq)).astype(np.int64)
        mask = np.ones((rows, seq), np.int64)
        mask[rows // 2:, seq // 2:] = 0  # half the rows padded to half length
        out[rows, seq] = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/all-MiniLM-L6-v2"))
    parser.add_argument("--out", type=Path, default=Path("bench-out/fusion"))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plain = args.model / "plain.onnx"
    graphs = {"as exported": plain}
    for kinds in (("mha",), ("gelu",), ("mha", "gelu")):
        graphs["+".join(kinds)] = rewrite(plain, args.out, kinds)
    optimized = args.out / "plain_ort_optimized.onnx"
    session(plain, 1, optimized)
    fused = Counter(n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node)
    print(json.dumps({"ort_optimized_ops": dict(fused.most_common())}))
    batches = feeds(np.random.default_rng(0))
    for threads in map(int, args.threads.split(",")):
        sessions = {name: session(path, threads) for name, path in graphs.items()}
        for shape, feed in batches.items():
            reference = sessions["as exported"].run(None, feed)[0]
            diffs = {name: float(np.abs(s.run(None, feed)[0] - reference).max()) for name, s in sessions.items()}
            samples = {name: [] for name in sessions}
            rounds = max(5, args.rounds // shape[0])
            for r in range(rounds):
                names = list(sessions)
                for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
                    started = time.perf_counter()
                    sessions[name].run(None, feed)
                    samples[name].append((time.perf_counter() - started) * 1e3)
            for name in sessions:
                print(json.dumps({"threads": threads, "shape": f"{shape[0]}x{shape[1]}", "graph": name,
                                  "median_ms": statistics.median(samples[name]), "rounds": rounds,
                                  "max_abs_diff": diffs[name]}), flush=True)


if __name__ == "__main__":
    main()
