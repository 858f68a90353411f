"""The ONNX graphs: their inputs and outputs, the modules that are traced, and the export itself.

    serve        tokens + z-level inputs                                   -> embeddings
    serve_<det>  tokens + z, U_<det>, base_<det>: every row through one DET -> embeddings (no other DET's ops)
    grad   tokens + targets, class_mask, logit_bias, labels, row_weight + z-level -> loss, logits, embeddings, gradients
    plain  tokens                                                     -> embeddings (no DET ops: the baseline)

serve takes any mix of DETs per row but runs every DET's plug points on every row; a batch whose rows share one DET
runs its serve_<det> graph instead, at nearly the plain graph's cost (issue 14).

The recipe is the verified one of docs/design/gradient-export.md: serve and plain are plain dynamo exports; grad is first
traced to one joint forward+backward graph with make_fx, which is then exported.
"""

import time
from pathlib import Path

import onnx
import torch
from tokenizers import Tokenizer
from torch._decomp import core_aten_decompositions
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from encoder import DETS, Bert

OPSET = 18
TOKENS = ["input_ids", "attention_mask", "token_type_ids"]
Z_LEVEL = ["z", "det_select", "U_lora", "base_lora", "U_adapter", "base_adapter", "U_prefix", "base_prefix"]
LOSS = ["targets", "class_mask", "logit_bias", "labels", "row_weight"]
IO = {
    "serve": {"inputs": TOKENS + Z_LEVEL, "outputs": ["embeddings"]},
    **{f"serve_{det}": {"inputs": TOKENS + ["z", f"U_{det}", f"base_{det}"], "outputs": ["embeddings"]} for det in DETS},
    "grad": {
        "inputs": TOKENS + LOSS + Z_LEVEL,
        "outputs": ["loss", "logits", "embeddings", "grad_z"] + [f"grad_{name}" for name in Z_LEVEL[2:]],
    },
    "plain": {"inputs": TOKENS, "outputs": ["embeddings"]},
}
# The dims of every input. Names in DYNAMIC are free at run time; "H" and "D" are fixed by the model.
DIMS = {
    "input_ids": ("batch", "seq"),  # int64
    "attention_mask": ("batch", "seq"),  # int64, 1 = token, 0 = padding
    "token_type_ids": ("batch", "seq"),  # int64, 0 = first text, 1 = second text of a pair
    "targets": ("classes", "H"),  # label-description embeddings; normalised inside
    "class_mask": ("batch", "classes"),  # 1 = the class belongs to the row's task
    "logit_bias": ("batch", "classes"),  # added to the row's logits: its task head's class priors (or 0)
    "labels": ("batch",),  # int64 index into classes
    "row_weight": ("batch",),  # the row's weight in the loss
    "z": ("batch", "d"),  # one code per row
    "det_select": ("batch", 3),  # columns: lora, adapter, prefix; 0 or 1
    **{f"U_{det}": ("D", "d") for det in DETS},  # basis, row-major
    **{f"base_{det}": ("D",) for det in DETS},  # offset
}
DYNAMIC = ("batch", "seq", "classes", "d")
# Trace sizes: distinct, >= 2, and equal to no static dim, so that no two dims collapse into one symbol.
TRACE = {"batch": 5, "seq": 37, "classes": 11, "d": 7}


class Serve(torch.nn.Module):
    """serve.onnx: tokens and z-level inputs -> embeddings."""

    def __init__(self, bert: Bert):
        super().__init__()
        self.bert = bert

    # torch.export needs every input spelled out (with *args it miscounts the dynamic shapes).
    def forward(self, input_ids, attention_mask, token_type_ids, z, det_select,
                U_lora, base_lora, U_adapter, base_adapter, U_prefix, base_prefix):
        return self.bert.encode_z(input_ids, attention_mask, token_type_ids, z, det_select,
                                  U_lora, base_lora, U_adapter, base_adapter, U_prefix, base_prefix)


class ServeOneDet(torch.nn.Module):
    """serve_<det>.onnx: tokens, z and one DET's U and base -> embeddings, every row through that DET."""

    def __init__(self, bert: Bert, det: str):
        super().__init__()
        self.bert, self.det = bert, det

    def forward(self, input_ids, attention_mask, token_type_ids, z, U, base):
        return self.bert.encode_one_det(self.det, input_ids, attention_mask, token_type_ids, z, U, base)


class Grad(torch.nn.Module):
    """grad.onnx: loss, logits, embeddings and the gradients w.r.t. z, U and base (traced by make_fx first)."""

    def __init__(self, bert: Bert, logit_scale: float):
        super().__init__()
        self.bert, self.logit_scale = bert, logit_scale

    def forward(self, input_ids, attention_mask, token_type_ids, targets, class_mask, logit_bias, labels,
                row_weight, z, det_select, U_lora, base_lora, U_adapter, base_adapter, U_prefix, base_prefix):
        return self.bert.loss_and_grads(input_ids, attention_mask, token_type_ids, targets, class_mask,
                                        logit_bias, labels, row_weight, z, det_select, U_lora, base_lora, U_adapter, base_adapter,
                                        U_prefix, base_prefix, logit_scale=self.logit_scale)


class Plain(torch.nn.Module):
    """plain.onnx: tokens -> embeddings, with no DET ops."""

    def __init__(self, bert: Bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert.encode(input_ids, attention_mask, token_type_ids)


def export_graph(bert: Bert, graph: str, path: Path, logit_scale: float) -> float:
    """Traces one graph at the TRACE sizes, writes it to path and returns the seconds it took."""
    start = time.perf_counter()
    names = IO[graph]["inputs"]
    example = random_inputs(bert, graph, **TRACE, generator=torch.Generator().manual_seed(0))
    args = tuple(example[name] for name in names)
    dims = {
        "batch": Dim("batch", min=1, max=4096),
        "seq": Dim("seq", min=1, max=bert.config.max_position_embeddings),  # position embeddings end there
        "classes": Dim("classes", min=1, max=1 << 20),
        "d": Dim("d", min=1, max=1 << 16),
    }
    dynamic_shapes = tuple(
        {axis: dims[dim] for axis, dim in enumerate(DIMS[name]) if dim in DYNAMIC} or None for name in names
    )
    if graph == "grad":
        # torch.export cannot export autograd.grad itself; make_fx records the joint forward+backward graph first.
        # "symbolic" keeps the dims dynamic ("real" silently bakes in the trace sizes); the weights are real
        # tensors captured by the closure, hence _allow_non_fake_inputs.
        module = make_fx(
            Grad(bert, logit_scale),
            decomposition_table=core_aten_decompositions(),
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,
        )(*args)
    elif graph.startswith("serve_"):
        module = ServeOneDet(bert, graph.removeprefix("serve_"))
    else:
        module = Serve(bert) if graph == "serve" else Plain(bert)
    module.eval()  # nothing depends on it (no dropout); it silences the exporter's training-mode warning
    torch.onnx.export(
        module,
        args,
        str(path),
        dynamo=True,
        input_names=names,
        output_names=IO[graph]["outputs"],
        dynamic_shapes=dynamic_shapes,
        opset_version=OPSET,
        external_data=False,
        verbose=False,
    )
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == names, [i.name for i in model.graph.input]
    assert [o.name for o in model.graph.output] == IO[graph]["outputs"], [o.name for o in model.graph.output]
    # The exporter annotates every node with its FX node and stack trace: 60% of the tiny grad graph's bytes.
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))
    return time.perf_counter() - start


def random_inputs(bert: Bert, graph: str, batch: int, seq: int, classes: int, d: int,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random inputs of the given sizes for one graph: padded rows of random length (row 0 full), token type 1 on
    the second half of odd rows, rows cycling lora/adapter/prefix/none, U ~ N(0, 0.05^2/d), base ~ N(0, 0.03^2)."""
    g, cfg, D = generator, bert.config, bert.layout.size("lora")
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    attention_mask = (torch.arange(seq)[None] < lengths[:, None]).long()  # [batch, seq]
    input_ids = torch.randint(1, cfg.vocab_size, (batch, seq), generator=g) * attention_mask
    second_half = torch.arange(seq)[None] >= (lengths[:, None] + 1) // 2
    odd = (torch.arange(batch) % 2 == 1)[:, None]
    token_type_ids = (second_half & odd).long() * attention_mask
    class_mask = (torch.rand(batch, classes, generator=g) < 0.7).float()
    labels = torch.randint(0, classes, (batch,), generator=g)
    class_mask[torch.arange(batch), labels] = 1.0  # the true class always belongs to the row's task
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "targets": torch.randn(classes, cfg.hidden, generator=g),
        "class_mask": class_mask,
        "labels": labels,
        "row_weight": torch.rand(batch, generator=g),
        "z": torch.randn(batch, d, generator=g),
        "det_select": torch.eye(4)[torch.arange(batch) % 4, :3],  # lora, adapter, prefix, none, lora, ...
    }
    for det in DETS:
        inputs[f"U_{det}"] = torch.randn(D, d, generator=g) * 0.05 / d**0.5
        inputs[f"base_{det}"] = torch.randn(D, generator=g) * 0.03
    inputs["logit_bias"] = torch.randn(batch, classes, generator=g)
    return {name: inputs[name] for name in IO[graph]["inputs"]}


def tokenize(tokenizer_path: Path, texts: list, max_seq_len: int) -> dict[str, torch.Tensor]:
    """Tokenizes texts (a str, or a (text, text_pair) tuple) as the Rust side does: truncated to max_seq_len
    (longest first for pairs), padded with [PAD] to the longest row."""
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(max_seq_len)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": torch.tensor([e.ids for e in encodings]),
        "attention_mask": torch.tensor([e.attention_mask for e in encodings]),
        "token_type_ids": torch.tensor([e.type_ids for e in encodings]),
    }
