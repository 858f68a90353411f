"""The tiny test fixture (tests/fixtures/tiny/): BERT's architecture at toy size with seeded random weights, a
small WordPiece vocabulary cut from MiniLM's, and the PyTorch references the Rust tests compare against."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from encoder import DETS, Bert, BertConfig, checkpoint_shapes
from graphs import IO, tokenize

MAX_SEQ_LEN = 64  # = max_position_embeddings below
WEIGHTS_SEED = 0
REFERENCE_SEED = 1
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LATIN_END = 0x250  # single characters below this code point are kept: ASCII, Latin-1 and Latin Extended A/B
FREQUENT = range(1996, 2996)  # MiniLM ids of its ~1000 most frequent words ("the", "of", "and", ...)

# The reference batch. Row 4 is a text pair, row 5 is longer than MAX_SEQ_LEN tokens, row 3 has no DET and
# characters that become [UNK]. Rows 0-2 are a 3-class task; rows 3-5 a 2-class task (class 2 masked out).
# row_weight gives each task's rows its mean; row 3's weight 0 shows that such rows add nothing to the loss.
ROWS = [
    {"text": "The movie was a delight from start to finish!", "det": "lora", "label": 2, "weight": 1 / 3},
    {"text": "Terrible service: we waited an hour and left hungry.", "det": "adapter", "label": 0, "weight": 1 / 3},
    {"text": "Is the new library open on Sundays?", "det": "prefix", "label": 1, "weight": 1 / 3},
    {"text": "Café au lait, naïve résumé, 東京 and 🙂 in one line.", "det": "none", "label": 1, "weight": 0.0},
    {
        "text": "A man is playing a guitar on the stage.",
        "pair": "Someone performs music in front of a crowd.",
        "det": "prefix",
        "label": 0,
        "weight": 1 / 2,
    },
    {
        "text": "The city council met on Monday night to discuss the new budget, which includes more money for "
        "schools, roads and public transport. Several members said the plan was too expensive, while others "
        "argued that the city had waited far too long to repair its old bridges. After four hours of debate, "
        "the council voted to delay the final decision until next month, when a report from the state will be "
        "available to the public.",
        "det": "lora",
        "label": 1,
        "weight": 1 / 2,
    },
]
CLASSES = 3
TASK_CLASSES = [3, 3, 3, 2, 2, 2]  # how many of the classes belong to each row's task
D_REFERENCE = 5  # d of the reference z


def config(vocab_size: int) -> BertConfig:
    return BertConfig(layers=2, hidden=32, heads=4, intermediate=64, vocab_size=vocab_size,
                      max_position_embeddings=MAX_SEQ_LEN, type_vocab_size=2, layer_norm_eps=1e-12)


def tokenizer_json(minilm: dict) -> dict:
    """MiniLM's tokenizer.json with a small vocabulary: the special tokens (renumbered 0..4), every single
    character below LATIN_END and its ## form, and MiniLM's FREQUENT words. Normalizer, pre-tokenizer and
    post-processor (token types for pairs) stay MiniLM's; other characters become [UNK]. Truncation and
    padding are left unset: the caller sets them."""
    vocab = minilm["model"]["vocab"]  # token -> MiniLM id
    by_id = sorted(vocab, key=vocab.get)
    chars = [t for t in by_id if len(t) == 1 and ord(t) < LATIN_END]
    continuations = [f"##{c}" for c in chars if f"##{c}" in vocab]
    keep = dict.fromkeys(SPECIAL + chars + continuations + [by_id[i] for i in FREQUENT])  # ordered, no repeats
    tiny = json.loads(json.dumps(minilm))  # a deep copy
    tiny["model"]["vocab"] = {token: i for i, token in enumerate(keep)}
    new_id = tiny["model"]["vocab"]
    tiny["added_tokens"] = [{**added, "id": new_id[added["content"]]} for added in minilm["added_tokens"]]
    for special in tiny["post_processor"]["special_tokens"].values():
        special["ids"] = [new_id[token] for token in special["tokens"]]
    tiny["truncation"] = tiny["padding"] = None
    return tiny


def random_checkpoint(config: BertConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under MiniLM's tensor names. Matrices are N(0, 1/fan_in) so activations stay O(1);
    embeddings N(0, 1); LayerNorm weights 1 + N(0, 0.1^2); biases N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in checkpoint_shapes(config).items():
        if name == "embeddings.position_ids":
            tensors[name] = torch.arange(config.max_position_embeddings)[None]
        elif name.endswith("LayerNorm.weight"):
            tensors[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bias"):
            tensors[name] = 0.1 * torch.randn(shape, generator=g)
        elif name.startswith("embeddings."):
            tensors[name] = torch.randn(shape, generator=g)
        else:
            tensors[name] = torch.randn(shape, generator=g) / shape[1] ** 0.5
    return tensors


def write_model(minilm_dir: Path, out: Path) -> Bert:
    """Writes tokenizer.json and model.safetensors to out and returns the model."""
    tokenizer = tokenizer_json(json.loads((minilm_dir / "tokenizer.json").read_text()))
    Tokenizer.from_str(json.dumps(tokenizer))  # fails loudly if the edited file is inconsistent
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=1))
    cfg = config(len(tokenizer["model"]["vocab"]))
    save_file(random_checkpoint(cfg, WEIGHTS_SEED), str(out / "model.safetensors"))
    return Bert.load(out / "model.safetensors", cfg)


def write_reference(bert: Bert, out: Path, logit_scale: float) -> None:
    """Writes reference.safetensors (inputs and expected outputs of all three graphs for ROWS) and
    reference.json (what the rows are). The outputs are computed in float64, then stored as float32."""
    g = torch.Generator().manual_seed(REFERENCE_SEED)
    D, H = bert.layout.size("lora"), bert.config.hidden
    texts = [(row["text"], row["pair"]) if "pair" in row else row["text"] for row in ROWS]
    one_hot = {det: [float(det == other) for other in DETS] for det in (*DETS, "none")}
    inputs = {
        **tokenize(out / "tokenizer.json", texts, MAX_SEQ_LEN),
        "targets": torch.randn(CLASSES, H, generator=g),
        "class_mask": torch.tensor([[float(c < n) for c in range(CLASSES)] for n in TASK_CLASSES]),
        "labels": torch.tensor([row["label"] for row in ROWS]),
        "row_weight": torch.tensor([row["weight"] for row in ROWS], dtype=torch.float32),
        "z": torch.randn(len(ROWS), D_REFERENCE, generator=g),
        "det_select": torch.tensor([one_hot[row["det"]] for row in ROWS]),
    }
    for det in DETS:
        inputs[f"U_{det}"] = torch.randn(D, D_REFERENCE, generator=g) * 0.05 / D_REFERENCE**0.5
        inputs[f"base_{det}"] = torch.randn(D, generator=g) * 0.03
    inputs["logit_bias"] = torch.randn(len(ROWS), CLASSES, generator=g)
    assert inputs["attention_mask"][5].all() and inputs["input_ids"].shape[1] == MAX_SEQ_LEN, "row 5 not truncated"

    bert64 = bert.to_dtype(torch.float64)
    as64 = {name: t.double() if t.is_floating_point() else t for name, t in inputs.items()}
    grad = bert64.loss_and_grads(*(as64[name] for name in IO["grad"]["inputs"]), logit_scale=logit_scale)
    outputs = dict(zip(IO["grad"]["outputs"], grad))
    serve = bert64.encode_z(*(as64[name] for name in IO["serve"]["inputs"]))
    assert torch.allclose(serve, outputs["embeddings"], rtol=0, atol=1e-12)  # one "embeddings" serves both
    outputs["plain_embeddings"] = bert64.encode(*(as64[name] for name in IO["plain"]["inputs"]))
    tensors = {**inputs, **outputs}
    stored = {name: (t.float() if t.is_floating_point() else t).contiguous() for name, t in tensors.items()}
    save_file(stored, str(out / "reference.safetensors"))

    description = {
        "command": ".venv-export/bin/python export/export.py --tiny --out tests/fixtures/tiny",
        "about": "PyTorch float64 reference for ROWS in export/tiny.py, stored as float32. Rust must reproduce "
        "the tokenization (truncation to max_seq_len, longest first; padding with [PAD] to the longest row) and "
        "every output within the relative error max|a - b| / max|b| <= tolerance. The logits of classes outside "
        "a row's task (class_mask 0) are about -1e9; compare the others on their own as well.",
        "tolerance": 1e-4,
        "max_seq_len": MAX_SEQ_LEN,
        "logit_scale": logit_scale,
        "d": D_REFERENCE,
        "texts": [row["text"] for row in ROWS],
        "pairs": [[row["text"], row["pair"]] if "pair" in row else None for row in ROWS],
        "dets": [row["det"] for row in ROWS],
        "det_select": inputs["det_select"].tolist(),
        "labels": inputs["labels"].tolist(),
        "class_mask": inputs["class_mask"].tolist(),
        "row_weight": inputs["row_weight"].tolist(),
        "inputs": list(inputs),
        "outputs": {
            "serve": {"embeddings": "embeddings"},
            "grad": {name: name for name in IO["grad"]["outputs"]},  # its embeddings equal serve's
            "plain": {"embeddings": "plain_embeddings"},
        },
    }
    (out / "reference.json").write_text(json.dumps(description, ensure_ascii=False, indent=1) + "\n")
