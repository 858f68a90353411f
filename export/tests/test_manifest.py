"""manifest.json against the encoder: the flat layout, its hash, and theta0."""

import hashlib
import json
import math
import os

import torch
from safetensors.torch import load_file

from common import IO, assert_close, float64
from encoder import DETS, init_theta0
from graphs import random_inputs


def test_manifest_describes_the_model(model):
    m, bert = model.manifest, model.bert
    assert m["format_version"] == 1
    assert m["config"] == {"layers": bert.config.layers, "hidden": bert.config.hidden, "heads": bert.config.heads,
                           "intermediate": bert.config.intermediate, "vocab_size": bert.config.vocab_size,
                           "max_position_embeddings": bert.config.max_position_embeddings,
                           "type_vocab_size": bert.config.type_vocab_size,
                           "layer_norm_eps": bert.config.layer_norm_eps}
    assert m["max_seq_len"] <= m["config"]["max_position_embeddings"]
    assert (m["logit_scale"], m["pooling"], m["seed"], m["export"]["opset"]) == (20.0, "mean", 42, 18)
    assert m["graph_io"] == IO
    for file in [m["tokenizer"], m["theta0"], *m["graphs"].values()]:
        assert (model.dir / file).is_file(), file
    assert [(d["name"], d["select_index"]) for d in m["dets"]] == [(det, i) for i, det in enumerate(DETS)]
    assert len({d["size"] for d in m["dets"]}) == 1, "the three DETs must have the same size D"


def test_layout_offsets_match_unflatten(model):
    """Every tensor named in the manifest sits where Layout.unflatten (what the graphs use) reads it."""
    layout = model.bert.layout
    for det in model.manifest["dets"]:
        D = det["size"]
        assert D == layout.size(det["name"])
        theta = torch.arange(D, dtype=torch.float64)[None]  # [1, D], every element its own offset
        unflat = layout.unflatten(det["name"], theta)
        end = 0
        for tensor in det["tensors"]:
            _, layer, slot = tensor["name"].split(".")
            assert tensor["offset"] == end, f"{tensor['name']} leaves a gap or overlaps"
            size = math.prod(tensor["shape"])
            want = theta[0, end : end + size].reshape(tensor["shape"])
            assert torch.equal(unflat[slot][0, int(layer)], want), tensor["name"]
            end += size
        assert end == D
        assert torch.equal(layout.flatten(det["name"], unflat), theta)


def test_layout_sha256(model):
    dets = [{key: d[key] for key in ("name", "size", "tensors")} for d in model.manifest["dets"]]
    text = json.dumps(dets, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest() == model.manifest["layout_sha256"]


def test_theta0_round_trip(model):
    """theta0.safetensors is init_theta0 with the manifest's seed, it survives unflatten -> flatten, and its
    parts follow their inits."""
    layout, H = model.bert.layout, model.bert.config.hidden
    stored = load_file(str(model.dir / model.manifest["theta0"]))
    regenerated = init_theta0(layout, model.manifest["seed"])
    assert stored.keys() == set(DETS)
    for det in DETS:
        theta = stored[det]
        assert theta.dtype == torch.float32 and theta.shape == (layout.size(det),)
        assert torch.equal(theta, regenerated[det]), f"{det}: theta0 is not deterministic"
        parts = layout.unflatten(det, theta[None])
        assert torch.equal(layout.flatten(det, parts)[0], theta)
        if det == "lora":
            assert (parts["q_b"] == 0).all() and (parts["v_b"] == 0).all()
            bound = 1 / math.sqrt(H)  # kaiming-uniform(a=sqrt(5)) with fan_in = H
            assert parts["q_a"].abs().max() <= bound and parts["q_a"].abs().max() > 0.9 * bound
        else:
            assert abs(theta.std().item() - 0.02) < 0.002 and abs(theta.mean().item()) < 0.002


def test_lora_theta0_is_a_no_op(model):
    """Serving LoRA's theta0 (z = 0, base = theta0) gives the plain BERT's embeddings."""
    inputs = random_inputs(model.bert, "serve", batch=3, seq=10, classes=2, d=1, generator=torch.Generator())
    inputs["z"].zero_()
    inputs["det_select"] = torch.tensor([[1.0, 0.0, 0.0]]).expand(3, 3).contiguous()
    inputs["base_lora"] = load_file(str(model.dir / model.manifest["theta0"]))["lora"]
    serve = model.run("serve", inputs)["embeddings"]
    plain = model.bert64.encode(*float64(inputs, "plain"))
    assert_close(f"{model.name} serve(LoRA theta0) vs plain", serve, plain)


def test_theta0_is_written_readable_by_others(tmp_path):
    """safetensors writes 0600; the export widens θ⁰ to the umask's mode, as the graphs are (deploy/Dockerfile's
    service user reads it for train and eval)."""
    from export import save_readable

    path = tmp_path / "theta0.safetensors"
    umask = os.umask(0o022)
    try:
        save_readable({"a": torch.zeros(2)}, path)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o044 == 0o044, oct(path.stat().st_mode)
    assert load_file(str(path))["a"].equal(torch.zeros(2))
