"""How much of a new task's stage-0 solution lies in the span of the upstream tasks' solutions (issue 10): the
geometric side of "does the learned subspace beat a random one". Stage 1's learned directions span exactly the
upstream solutions (one direction per task), so a task whose solution δ lies outside that span gains nothing from
them that random directions would not give.

    .venv-export/bin/python export/solution_span.py [--stage0 models/all-MiniLM-L6-v2/stage0] [--out FILE.jsonl]

For each task with all three solutions (δ = θ − θ⁰ of LoRA, Adapter and Prefix, f16 files of scripts/stage0.sh):
- an upstream task, left out: the span of the other upstream tasks' stacked δ = [δ_L; δ_A; δ_P];
- an unseen task: the span of all upstream tasks' stacked δ;
it prints the fraction of ‖δ‖² inside that span, for the stacked δ (one z for all DETs, as the subspace decodes it)
and for each DET's block alone (that block of the same span), with the largest cosine to any single upstream
solution, and the fraction a span of as many random directions holds (the control; about directions / size).
Where directions are not shared, the parameters that move might be: `<det>_diagonal_gain` is how much more of δ
a random direction holds when scaled per parameter by the same upstream solutions' RMS than an isotropic one does
(1 = the solutions move every parameter alike).
One JSON line per task; no forward pass, about a minute.

--growth adds how the fraction grows with the number of upstream tasks in the span: for 2, 4, 8 and 16 others
(seeded random subsets), the mean over the left-out upstream tasks, per DET: what more upstream tasks would buy.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

DETS = ("lora", "adapter", "prefix")


def solutions(directory: Path) -> dict[str, list[np.ndarray]]:
    """Task → its δ per DET (f32), for tasks with all three."""
    tasks = sorted({p.name.split(".")[0] for p in directory.glob("*.safetensors")})
    out = {}
    for task in tasks:
        files = [directory / f"{task}.{det}.safetensors" for det in DETS]
        if all(f.is_file() for f in files):
            out[task] = [load_file(str(f))["delta"].astype(np.float64) for f in files]
    return out


def captured(basis: np.ndarray, vector: np.ndarray) -> float:
    """Fraction of ‖vector‖² inside the column span of `basis`."""
    q, _ = np.linalg.qr(basis)
    inside = q.T @ vector
    return float(inside @ inside / (vector @ vector))


def scaled_gain(weights: np.ndarray, vector: np.ndarray) -> float:
    """E[(u·v)²] / (E‖u‖² ‖v‖²) for u = √weights ∘ r, r ~ N(0, I), against the same for an isotropic u (1 / D): how
    many times more of `vector` a random direction scaled per coordinate by √weights holds."""
    return float(weights.size * np.sum(weights * vector**2) / (np.sum(weights) * np.sum(vector**2)))


def measure(task: str, kind: str, deltas: list[np.ndarray], others: list[list[np.ndarray]], rng) -> dict:
    stacked = np.concatenate(deltas)
    span = np.stack([np.concatenate(o) for o in others], axis=1)
    random = rng.standard_normal(span.shape)
    line = {"task": task, "kind": kind, "span_tasks": len(others), "size": stacked.size,
            "stacked": captured(span, stacked), "random_control": captured(random, stacked)}
    start = 0
    for det, delta in zip(DETS, deltas):
        block = span[start:start + delta.size]
        line[det] = captured(block, delta)
        cosines = block.T @ delta / (np.linalg.norm(block, axis=0) * np.linalg.norm(delta))
        line[f"{det}_max_cosine"] = float(np.abs(cosines).max())
        line[f"{det}_diagonal_gain"] = scaled_gain(np.mean(block**2, axis=1), delta)
        start += delta.size
    return line


def growth(upstream: dict[str, list[np.ndarray]], rng) -> list[dict]:
    """Mean fraction of a left-out upstream task's δ in the span of k other upstream tasks, per DET."""
    lines = []
    print("\n| upstream tasks in the span | LoRA / Adapter / Prefix in span (%), mean over left-out tasks |")
    print("|---|---|")
    for k in (2, 4, 8, 16):
        fractions = {det: [] for det in DETS}
        for task, deltas in upstream.items():
            others = [o for u, o in upstream.items() if u != task]
            chosen = [others[i] for i in rng.choice(len(others), size=min(k, len(others)), replace=False)]
            for i, det in enumerate(DETS):
                fractions[det].append(captured(np.stack([o[i] for o in chosen], axis=1), deltas[i]))
        line = {"kind": "growth", "span_tasks": k, **{det: float(np.mean(v)) for det, v in fractions.items()}}
        print(f"| {k} | " + " / ".join(f"{100 * line[d]:.2f}" for d in DETS) + " |")
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage0", type=Path, default=Path("models/all-MiniLM-L6-v2/stage0"))
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    parser.add_argument("--growth", action="store_true", help="also the fraction against the span's task count")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    upstream, unseen = solutions(args.stage0 / "upstream"), solutions(args.stage0 / "unseen")
    lines = [measure(t, "upstream, left out", d, [o for u, o in upstream.items() if u != t], rng)
             for t, d in upstream.items()]
    lines += [measure(t, "unseen", d, list(upstream.values()), rng) for t, d in unseen.items()]
    print("| task | kind | span of | stacked δ in span (%) | random control (%) | LoRA / Adapter / Prefix in span (%) "
          "| max cosine to one upstream δ, L / A / P |")
    print("|---|---|---|---|---|---|---|")
    for line in lines:
        print(f"| {line['task']} | {line['kind']} | {line['span_tasks']} | {100 * line['stacked']:.1f} | "
              f"{100 * line['random_control']:.3f} | "
              + " / ".join(f"{100 * line[d]:.1f}" for d in DETS) + " | "
              + " / ".join(f"{line[f'{d}_max_cosine']:.2f}" for d in DETS) + " |")
    if args.growth:
        lines += growth(upstream, rng)
    if args.out:
        args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))


if __name__ == "__main__":
    main()
