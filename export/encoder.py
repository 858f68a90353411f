"""deltaspace's encoder: a compact functional BERT with three delta-tuning plug points.

One frozen sentence encoder (all-MiniLM-L6-v2) serves many tasks. A task is a low-dimensional code z in a subspace
shared by three delta-tuning methods (DETs). Inside the graph, each row's code is decoded to that row's DET
parameters, in each DET's flat layout:

    theta_k = (base_k + z @ U_k.T) * det_select[:, k]        # [batch, D], k = lora, adapter, prefix

and the parameters are plugged into BERT per row:
- LoRA on the query and value projections:   q += scale * (x q_a^T) q_b^T,   scale = alpha / r
- Houlsby adapters, SiLU, no biases, after the attention output and after the FFN output:   h += silu(h down) up
- Prefix keys and values (post-projection) in front of each layer's K and V; det_select[:, 2] masks them.
The sentence embedding is the mean over attention_mask of the last layer, L2-normalised (sentence-transformers).

References:
1) BERT: Devlin et al. 2019; the weight names follow Hugging Face transformers' modeling_bert.py (BertModel).
2) The unified subspace: Yi et al., "Different Tunes Played with Equal Skill", Findings of EMNLP 2022 (arXiv
   2210.13311), code github.com/thunlp/Unified-DeltaTuning (src/module/lora.py, adapter.py, prefix.py).
3) LoRA: Hu et al. 2021. Adapters: Houlsby et al. 2019. Prefix-tuning: Li and Liang 2021.
4) The export recipe and its verification: docs/design/z-graph.md and docs/design/gradient-export.md.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

DETS = ("lora", "adapter", "prefix")  # position = the det's column in det_select


@dataclass(frozen=True)
class BertConfig:
    """BERT's hyperparameters. Each comment names the field of Hugging Face's config.json it is read from."""

    layers: int = 6  # num_hidden_layers: transformer blocks, L
    hidden: int = 384  # hidden_size: width of every token vector, H
    heads: int = 12  # num_attention_heads: each head has hidden / heads dims
    intermediate: int = 1536  # intermediate_size: inner width of the feed-forward block
    vocab_size: int = 30522  # vocab_size: rows of the word-embedding table
    max_position_embeddings: int = 512  # max_position_embeddings: the longest input, in tokens
    type_vocab_size: int = 2  # type_vocab_size: token types (0 = first text, 1 = second text of a pair)
    layer_norm_eps: float = 1e-12  # layer_norm_eps

    @classmethod
    def from_hf(cls, path: Path) -> "BertConfig":
        hf = json.loads(Path(path).read_text())
        # Only these variants are implemented below.
        assert hf["hidden_act"] == "gelu", hf["hidden_act"]
        assert hf.get("position_embedding_type", "absolute") == "absolute"
        return cls(
            layers=hf["num_hidden_layers"],
            hidden=hf["hidden_size"],
            heads=hf["num_attention_heads"],
            intermediate=hf["intermediate_size"],
            vocab_size=hf["vocab_size"],
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf["type_vocab_size"],
            layer_norm_eps=hf["layer_norm_eps"],
        )


@dataclass(frozen=True)
class DetConfig:
    """Sizes of the three DETs. They are trace-time constants: changing one changes D and the flat layout."""

    lora_rank: int = 8  # r: rank of the LoRA update on query and value
    lora_alpha: int = 16  # LoRA's alpha; the update is scaled by alpha / r
    bottleneck: int = 8  # m: inner width of each adapter
    prefix_length: int = 16  # P: prefix key/value slots per layer

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank


class Layout:
    """Where each per-layer tensor of a DET lives in that DET's flat vector theta.

    Layer-major; within a layer the slots come in the order below; each slot is row-major. So element (l, slot s,
    i, j) sits at offset l * per_layer + (sizes of the slots before s) + i * cols + j.
    """

    def __init__(self, config: BertConfig, det: DetConfig):
        H, r, m, P = config.hidden, det.lora_rank, det.bottleneck, det.prefix_length
        self.layers = config.layers
        self.slots = {  # det -> [(slot name, shape)] of one layer
            "lora": [("q_a", (r, H)), ("q_b", (H, r)), ("v_a", (r, H)), ("v_b", (H, r))],
            "adapter": [("att_down", (H, m)), ("att_up", (m, H)), ("ffn_down", (H, m)), ("ffn_up", (m, H))],
            "prefix": [("k", (P, H)), ("v", (P, H))],
        }

    def per_layer(self, det: str) -> int:
        return sum(math.prod(shape) for _, shape in self.slots[det])

    def size(self, det: str) -> int:
        """D: the length of the det's flat vector."""
        return self.layers * self.per_layer(det)

    def tensors(self, det: str) -> list[dict]:
        """The manifest's entries: every per-layer tensor with its name, shape and offset."""
        entries, offset = [], 0
        for layer in range(self.layers):
            for slot, shape in self.slots[det]:
                entries.append({"name": f"layers.{layer}.{slot}", "shape": list(shape), "offset": offset})
                offset += math.prod(shape)
        return entries

    def unflatten(self, det: str, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """[batch, D] -> {slot: [batch, layers, *shape]}."""
        per_layer = theta.reshape(-1, self.layers, self.per_layer(det))  # [B, L, D / L]
        out, start = {}, 0
        for slot, shape in self.slots[det]:
            size = math.prod(shape)
            out[slot] = per_layer[:, :, start : start + size].reshape(-1, self.layers, *shape)  # [B, L, *shape]
            start += size
        return out

    def flatten(self, det: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """{slot: [batch, layers, *shape]} -> [batch, D]; the inverse of unflatten."""
        parts = [tensors[slot].flatten(2) for slot, _ in self.slots[det]]  # each [B, L, slot size]
        return torch.cat(parts, dim=2).flatten(1)


def init_theta0(layout: Layout, seed: int) -> dict[str, torch.Tensor]:
    """theta0: the shared initial point of every DET, flat [D] float32, the same on every run.

    As in Unified-DeltaTuning (src/module/lora.py, adapter.py; prefix as plain N(0, 0.02^2) vectors here):
    LoRA a is kaiming-uniform(a=sqrt(5)), i.e. U(-1/sqrt(H), 1/sqrt(H)), and LoRA b is 0, so LoRA's theta0 is an
    exact no-op; adapter down and up and prefix k and v are N(0, 0.02^2). One CPU generator seeded once draws the
    DETs in DETS order and each DET's tensors in layout order.
    """
    generator = torch.Generator().manual_seed(seed)

    def draw(det: str, slot: str, shape: tuple[int, int]) -> torch.Tensor:
        t = torch.empty(shape)
        if det == "lora" and slot.endswith("_a"):
            return torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)  # fan_in = H
        if det == "lora":
            return t.zero_()
        return t.normal_(0.0, 0.02, generator=generator)

    theta0 = {}
    for det in DETS:
        slots = layout.slots[det] * layout.layers  # every tensor in layout order
        theta0[det] = torch.cat([draw(det, slot, shape).flatten() for slot, shape in slots])  # [D]
    return theta0


@dataclass
class RowDets:
    """Every row's DET parameters: {slot: [batch, layers, *shape]} per DET (see Layout.slots). A DET that is None
    has no plug points in the graph at all (the one-DET serving graphs)."""

    lora: dict[str, torch.Tensor] | None
    adapter: dict[str, torch.Tensor] | None
    prefix: dict[str, torch.Tensor] | None
    prefix_on: torch.Tensor  # [batch] 1.0 = attend to the row's prefix slots, 0.0 = mask them out

    def layer(self, l: int) -> dict[str, torch.Tensor]:
        """The tensors of layer l as {"lora.q_a": [batch, r, H], ...}, for the DETs present."""
        present = [det for det in DETS if getattr(self, det) is not None]
        return {f"{det}.{slot}": t[:, l] for det in present for slot, t in getattr(self, det).items()}


# Checkpoint tensors the encoder does not use: position_ids is 0..n-1, and mean pooling replaces BERT's pooler.
UNUSED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def checkpoint_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a BertModel checkpoint saved without the `bert.` prefix (MiniLM's names)."""
    H, I = config.hidden, config.intermediate
    shapes = {
        "embeddings.position_ids": (1, config.max_position_embeddings),
        "embeddings.word_embeddings.weight": (config.vocab_size, H),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, H),
        "embeddings.LayerNorm.weight": (H,),
        "embeddings.LayerNorm.bias": (H,),
    }
    for l in range(config.layers):
        for name, (rows, cols) in {
            "attention.self.query": (H, H),
            "attention.self.key": (H, H),
            "attention.self.value": (H, H),
            "attention.output.dense": (H, H),
            "intermediate.dense": (I, H),
            "output.dense": (H, I),
        }.items():
            shapes[f"encoder.layer.{l}.{name}.weight"] = (rows, cols)
            shapes[f"encoder.layer.{l}.{name}.bias"] = (rows,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"encoder.layer.{l}.{norm}.weight"] = (H,)
            shapes[f"encoder.layer.{l}.{norm}.bias"] = (H,)
    shapes["pooler.dense.weight"] = (H, H)
    shapes["pooler.dense.bias"] = (H,)
    return shapes


def classify(emb: torch.Tensor, targets: torch.Tensor, class_mask: torch.Tensor, logit_bias: torch.Tensor,
             logit_scale: float) -> torch.Tensor:
    """Logits [batch, classes]: scaled cosines to the targets plus each row's class bias (a task head's class
    priors; 0 for a task without one). A class outside the row's task (class_mask 0) gets -1e9 added, so one batch
    can mix tasks with different label sets. emb is already unit-norm; targets are normalised here."""
    return logit_scale * emb @ F.normalize(targets, dim=-1).T + logit_bias + (1.0 - class_mask) * -1e9


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
    """sum_b row_weight[b] * CE(logits[b], labels[b]); the caller chooses the weights (1/n: batch mean)."""
    return (F.cross_entropy(logits, labels, reduction="none") * row_weight).sum()


class Bert(torch.nn.Module):
    """The frozen BERT as a function of token ids and, optionally, every row's DET parameters."""

    def __init__(self, config: BertConfig, weights: dict[str, torch.Tensor], det: DetConfig = DetConfig()):
        """weights: the checkpoint's tensors without UNUSED ones; use Bert.load to read a checkpoint."""
        super().__init__()
        # A plain dict, not buffers: the export captures these as constants, which become ONNX initializers.
        self.weights = weights
        self.config, self.det = config, det
        self.layout = Layout(config, det)

    @classmethod
    def load(cls, path: Path, config: BertConfig, det: DetConfig = DetConfig()) -> "Bert":
        """Reads a model.safetensors checkpoint and checks every name and shape against checkpoint_shapes."""
        tensors, expected = load_file(str(path)), checkpoint_shapes(config)
        assert tensors.keys() == expected.keys(), (
            f"mismatched keys: missing {sorted(expected.keys() - tensors.keys())}, "
            f"unexpected {sorted(tensors.keys() - expected.keys())}"
        )
        for name, shape in expected.items():
            assert tuple(tensors[name].shape) == shape, f"{name}: {tuple(tensors[name].shape)} != {shape}"
        positions = torch.arange(config.max_position_embeddings)
        assert torch.equal(tensors["embeddings.position_ids"][0], positions), "position_ids are not 0..n-1"
        return cls(config, {name: t for name, t in tensors.items() if name not in UNUSED}, det)

    def to_dtype(self, dtype: torch.dtype) -> "Bert":
        """A copy in another float dtype (float64 references for the tests)."""
        return Bert(self.config, {name: t.to(dtype) for name, t in self.weights.items()}, self.det)

    # --- the three entry points that become ONNX graphs --------------------------------------------------------

    def encode(self, input_ids, attention_mask, token_type_ids, dets: RowDets | None = None) -> torch.Tensor:
        """[batch, seq] int64 ids, mask and token types -> unit-norm embeddings [batch, H].
        With dets=None this is the plain BERT, without any DET ops (the serving baseline)."""
        cfg, w = self.config, self.weights
        B, S = input_ids.shape
        x = (
            F.embedding(input_ids, w["embeddings.word_embeddings.weight"])
            + w["embeddings.position_embeddings.weight"][:S]
            + F.embedding(token_type_ids, w["embeddings.token_type_embeddings.weight"])
        )  # [B, S, H]
        x = self._layer_norm(x, "embeddings.LayerNorm")
        keep = attention_mask.to(x.dtype)  # [B, S] 1 = attend to this key
        if dets is not None and dets.prefix is not None:
            prefix_keep = dets.prefix_on[:, None].expand(B, self.det.prefix_length)  # [B, P]
            keep = torch.cat([prefix_keep, keep], dim=1)  # [B, P + S]: the prefix keys come first
        bias = ((1.0 - keep) * -1e9)[:, None, None, :]  # [B, 1, 1, keys], added to the attention scores
        for l in range(cfg.layers):  # a loop rather than a fold: easier to debug
            x = self._layer(l, x, bias, None if dets is None else dets.layer(l))
        return F.normalize(mean_pool(x, attention_mask), dim=-1)

    def encode_z(self, input_ids, attention_mask, token_type_ids, z, det_select,
                 U_lora, base_lora, U_adapter, base_adapter, U_prefix, base_prefix) -> torch.Tensor:
        """Serving: each row's code z [batch, d] and det_select [batch, 3] -> embeddings [batch, H]."""
        dets = self.decode_z(z, det_select, U_lora, base_lora, U_adapter, base_adapter, U_prefix, base_prefix)
        return self.encode(input_ids, attention_mask, token_type_ids, dets)

    def encode_one_det(self, det: str, input_ids, attention_mask, token_type_ids, z, U, base) -> torch.Tensor:
        """Serving a batch whose rows all use one DET: each row's code z [batch, d] decoded through that DET's U and
        base -> embeddings [batch, H]. The same as encode_z with det_select one-hot on det, without the other DETs'
        plug points (so without their cost)."""
        theta = base + z @ U.T  # [B, D]
        parts = {other: None for other in DETS}
        parts[det] = self.layout.unflatten(det, theta)
        prefix_on = torch.ones_like(z[:, 0])  # [B]: every row of the prefix graph attends to its prefix
        return self.encode(input_ids, attention_mask, token_type_ids, RowDets(**parts, prefix_on=prefix_on))

    def loss_and_grads(self, input_ids, attention_mask, token_type_ids, targets, class_mask, logit_bias, labels,
                       row_weight, z, det_select, U_lora, base_lora, U_adapter, base_adapter, U_prefix, base_prefix,
                       logit_scale: float) -> tuple[torch.Tensor, ...]:
        """Training: the weighted loss, logits, embeddings and the gradients of the loss with respect to z and to
        every U and base, in the grad graph's output order."""
        with torch.enable_grad():
            leaves = [
                t.detach().requires_grad_(True)
                for t in (z, U_lora, base_lora, U_adapter, base_adapter, U_prefix, base_prefix)
            ]
            emb = self.encode_z(input_ids, attention_mask, token_type_ids, leaves[0], det_select, *leaves[1:])
            logits = classify(emb, targets, class_mask, logit_bias, logit_scale)
            loss = weighted_cross_entropy(logits, labels, row_weight)
            grads = torch.autograd.grad(loss, leaves)
        return (loss.detach(), logits.detach(), emb.detach(), *grads)

    # --- pieces ------------------------------------------------------------------------------------------------

    def decode_z(self, z, det_select, U_lora, base_lora, U_adapter, base_adapter, U_prefix, base_prefix) -> RowDets:
        """theta_k = (base_k + z U_k^T) * det_select[:, k] per DET k, unflattened to per-layer tensors.
        A row with 0 in column k gets theta_k = 0: zero LoRA and adapter parameters are exact no-ops (no biases,
        silu(0) = 0), and the prefix is masked out through prefix_on."""
        bases = {"lora": (U_lora, base_lora), "adapter": (U_adapter, base_adapter), "prefix": (U_prefix, base_prefix)}
        theta = {}
        for k, det in enumerate(DETS):
            U, base = bases[det]
            theta[det] = (base + z @ U.T) * det_select[:, k : k + 1]  # [B, D]
        unflat = {det: self.layout.unflatten(det, theta[det]) for det in DETS}
        return RowDets(**unflat, prefix_on=det_select[:, 2])

    def _layer(self, l: int, x: torch.Tensor, bias: torch.Tensor, det: dict[str, torch.Tensor] | None):
        """Encoder block l (HF BertLayer) on x [B, S, H], with layer l's DET parameters when det is given."""
        p = f"encoder.layer.{l}."
        q = self._linear(x, p + "attention.self.query")  # [B, S, H]
        k = self._linear(x, p + "attention.self.key")
        v = self._linear(x, p + "attention.self.value")
        det = det or {}
        if "lora.q_a" in det:
            q = q + self.det.lora_scale * low_rank(x, det["lora.q_a"], det["lora.q_b"])
            v = v + self.det.lora_scale * low_rank(x, det["lora.v_a"], det["lora.v_b"])
        if "prefix.k" in det:
            k = torch.cat([det["prefix.k"], k], dim=1)  # [B, P + S, H]
            v = torch.cat([det["prefix.v"], v], dim=1)
        a = self._linear(self._attention(q, k, v, bias), p + "attention.output.dense")  # [B, S, H]
        if "adapter.att_down" in det:
            a = adapter(a, det["adapter.att_down"], det["adapter.att_up"])
        a = self._layer_norm(a + x, p + "attention.output.LayerNorm")
        f = self._linear(F.gelu(self._linear(a, p + "intermediate.dense")), p + "output.dense")  # [B, S, H]
        if "adapter.ffn_down" in det:
            f = adapter(f, det["adapter.ffn_down"], det["adapter.ffn_up"])
        return self._layer_norm(f + a, p + "output.LayerNorm")

    def _attention(self, q, k, v, bias) -> torch.Tensor:
        """Multi-head attention: q [B, S, H], k and v [B, keys, H], bias [B, 1, 1, keys] -> [B, S, H]."""
        B, S, H = q.shape
        nh = self.config.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, -1, nh, H // nh).transpose(1, 2)  # [B, T, H] -> [B, nh, T, H / nh]

        scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(H // nh) + bias  # [B, nh, S, keys]
        ctx = torch.softmax(scores, dim=-1) @ heads(v)  # [B, nh, S, H / nh]
        return ctx.transpose(1, 2).reshape(B, S, H)  # [B, S, H]

    def _linear(self, x, name):
        return F.linear(x, self.weights[name + ".weight"], self.weights[name + ".bias"])

    def _layer_norm(self, x, name):
        w, cfg = self.weights, self.config
        return F.layer_norm(x, (cfg.hidden,), w[name + ".weight"], w[name + ".bias"], cfg.layer_norm_eps)


def low_rank(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LoRA's update without its scale: (x a^T) b^T for x [B, S, H], a [B, r, H], b [B, H, r]."""
    return (x @ a.transpose(-1, -2)) @ b.transpose(-1, -2)  # [B, S, r] -> [B, S, H]


def adapter(h: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Houlsby adapter with an internal residual and no biases (Unified-DeltaTuning src/module/adapter.py):
    h + silu(h down) up for h [B, S, H], down [B, H, m], up [B, m, H]."""
    return h + F.silu(h @ down) @ up


def mean_pool(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, S, H] over the tokens with attention_mask 1 -> [B, H] (sentence-transformers' Pooling)."""
    mask = attention_mask.to(x.dtype)[:, :, None]  # [B, S, 1]
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
