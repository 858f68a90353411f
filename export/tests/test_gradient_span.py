"""export/gradient_span.py on the tiny fixture: its gradients are the loss's (against central differences), and the
subspace file it writes carries the content hash the Rust loader checks."""

import hashlib
import subprocess
from argparse import Namespace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from common import ROOT
from encoder import DETS
from graphs import tokenize
from gradient_span import fisher_columns, gradients, loss_and_gradient, read_task, write_subspace
from solution_span import scaled_gain

DATA = ROOT / "tests/fixtures/data/sst2"


def test_gradients_match_central_differences(tiny):
    bert, scale = tiny.bert64, tiny.manifest["logit_scale"]
    tokenizer = tiny.dir / "tokenizer.json"
    inputs, labels, descriptions, names = read_task(DATA)
    tokens = tokenize(tokenizer, inputs[:4], 32)
    targets = bert.encode(**tokenize(tokenizer, descriptions, 32)).detach()
    batch_labels = torch.tensor([names.index(label) for label in labels[:4]])
    theta0 = {det: t.to(torch.float64) for det, t in _theta0(tiny).items()}
    for det in DETS:
        _, grad = loss_and_gradient(bert, tokens, targets, batch_labels, det, theta0, scale)
        direction = torch.randn(grad.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        eps = 1e-5
        losses = [loss_and_gradient(bert, tokens, targets, batch_labels, det,
                                    {**theta0, det: theta0[det] + sign * eps * direction}, scale)[0]
                  for sign in (1, -1)]
        expected = (losses[0] - losses[1]) / (2 * eps)
        assert abs(float(grad @ direction) - expected) <= 1e-5 * max(1.0, abs(expected)), det


def test_gradients_are_one_per_batch(tiny):
    theta0 = {det: t.numpy() for det, t in _theta0(tiny).items()}
    g = gradients(tiny.bert, tiny.dir / "tokenizer.json", theta0, "lora", DATA, batches=3, rows=2, seed=1,
                  max_seq_len=32, logit_scale=tiny.manifest["logit_scale"])
    assert g.shape == (3, theta0["lora"].shape[0])
    assert np.all(np.linalg.norm(g, axis=1) > 0)
    assert not np.allclose(g[0], g[1])


def test_written_subspace_loads_in_rust(tiny, tmp_path):
    theta0 = {det: t.numpy() for det, t in _theta0(tiny).items()}
    size = theta0["adapter"].shape[0]
    learned = np.linalg.qr(np.random.default_rng(0).standard_normal((size, 3)))[0]
    path = tmp_path / "gradient.safetensors"
    write_subspace(Namespace(model=tiny.dir, det="adapter", dim=5, subspace=path), learned, theta0,
                   "gradient3-adapter-d5")
    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
        hasher = hashlib.sha256()
        for det in DETS:
            for name in (f"U.{det}", f"base.{det}"):
                hasher.update(f.get_tensor(name).astype("<f4").tobytes())
        u = f.get_tensor("U.adapter").astype(np.float64)
    assert metadata["content_sha256"] == hasher.hexdigest()
    assert metadata["d"] == "5" and u.shape == (size, 5)
    assert np.allclose(u[:, :3], learned, atol=1e-3)  # the learned directions first (f16)
    binary = ROOT / "target/debug/deltaspace"
    if not binary.exists():  # scripts/test.sh builds it before pytest runs
        pytest.skip("target/debug/deltaspace is not built: the Rust side is unchecked")
    info = subprocess.run([binary, "subspace", "info", path, "--model", tiny.dir], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert '"name":"gradient3-adapter-d5"' in info.stdout


def test_fisher_columns_are_unit_and_follow_the_sensitive_parameters():
    fisher = np.array([4.0, 1.0, 0.0, 0.0] * 50)
    columns = fisher_columns(fisher, 6, np.random.default_rng(0))
    assert columns.shape == (200, 6)
    assert np.allclose(np.linalg.norm(columns, axis=0), 1.0)
    assert np.all(columns[fisher == 0] == 0)  # no weight where no upstream gradient reached
    mass = (columns**2).sum(axis=1)
    assert mass[fisher == 4].sum() > 2 * mass[fisher == 1].sum()
    with pytest.raises(SystemExit, match="all zero"):
        fisher_columns(np.zeros(10), 2, np.random.default_rng(0))


def test_scaled_gain_is_one_for_a_flat_diagonal_and_grows_where_the_vector_sits():
    vector = np.random.default_rng(1).standard_normal(100)
    assert abs(scaled_gain(np.ones(100), vector) - 1) < 1e-12
    on_top = np.zeros(100)
    on_top[:10] = 1.0
    fisher = np.full(100, 0.01)
    fisher[:10] = 1.0
    assert scaled_gain(fisher, on_top) > 5  # the vector lies where the diagonal is heavy
    assert scaled_gain(fisher, 1 - on_top) < 0.2


def _theta0(tiny) -> dict[str, torch.Tensor]:
    with safe_open(str(tiny.dir / "theta0.safetensors"), "pt") as f:
        return {det: f.get_tensor(det) for det in DETS}
