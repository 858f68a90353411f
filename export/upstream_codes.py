"""The upstream tasks' codes in a learned subspace, as task files that `deltaspace tune --init` starts from.

Stage 1 decomposes the upstream tasks' stage-0 solutions: each task's δ (every DET's, stacked) lies in the span of
the subspace's learned columns (stage 1's subspaces pass through θ⁰: base = θ⁰, so θ = θ⁰ + δ is base + U z), so
its code z_t solves U z_t = δ_t, jointly over the DETs, in those columns (the random columns that complete the
subspace get 0). A task file carries z_t with the upstream task's own labels, so
`deltaspace eval --task` scores the code as it is, and `tune --init` starts an unseen task from it (a warm start a
random subspace cannot offer).

    .venv-export/bin/python export/upstream_codes.py --subspace models/all-MiniLM-L6-v2/subspaces/default.safetensors \\
        --solutions models/all-MiniLM-L6-v2/stage0/upstream --data DATA_DIR --out runs/upstream-codes

Prints, per task, how much of its stacked δ the code reproduces (1 = all of it).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open


def read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(str(path), framework="numpy") as f:
        return {name: f.get_tensor(name).astype(np.float64) for name in f.keys()}, f.metadata() or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subspace", type=Path, required=True)
    parser.add_argument("--solutions", type=Path, required=True, help="<task>.<det>.safetensors files (stage 0)")
    parser.add_argument("--data", type=Path, required=True, help="task directories, for each task's labels.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    tensors, meta = read(args.subspace)
    dets = meta["dets"].split(",")
    if any(f"U.{det}" not in tensors for det in dets):
        sys.exit(f"{args.subspace} stores no learned columns (U.<det>): a random subspace has no upstream codes")
    d = int(meta["d"])
    subspace_id = f'{meta["name"]}@{meta["content_sha256"][:12]}'
    # The learned columns, stacked over the DETs (the file keeps only those; base is θ⁰, so δ = U z).
    learned = np.concatenate([tensors[f"U.{det}"] for det in dets])
    tasks = sorted({p.name.split(".")[0] for p in args.solutions.glob("*.safetensors")})
    args.out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        missing = [det for det in dets if not (args.solutions / f"{task}.{det}.safetensors").is_file()]
        if missing:
            sys.exit(f"{task}: no stage-0 solution for {', '.join(missing)} in {args.solutions}")
        delta = np.concatenate([read(args.solutions / f"{task}.{det}.safetensors")[0]["delta"] for det in dets])
        code, *_ = np.linalg.lstsq(learned, delta, rcond=None)
        kept = 1 - np.sum((learned @ code - delta) ** 2) / np.sum(delta**2)
        z = np.zeros(d)
        z[: learned.shape[1]] = code
        labels = json.loads((args.data / task / "labels.json").read_text())
        file = {"name": task, "det": dets[0], "z": [round(float(v), 7) for v in z], "labels": labels,
                "subspace": subspace_id}
        (args.out / f"{task}.json").write_text(json.dumps(file) + "\n")
        print(json.dumps({"task": task, "norm": round(float(np.linalg.norm(code)), 3),
                          "delta_kept": round(float(kept), 4), "file": str(args.out / f"{task}.json")}))


if __name__ == "__main__":
    main()
