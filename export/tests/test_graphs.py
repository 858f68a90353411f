"""ONNX Runtime (CPU) against the float64 PyTorch model: outputs and gradients, a mixed batch against separate
runs, and the op set."""

import numpy as np
import onnx
import pytest
import torch

from common import IO, assert_close, float64
from encoder import DETS
from graphs import DIMS, random_inputs

# Run-time sizes, all different from the trace sizes (5, 37, 11, 7), including d = 1 and classes = 2.
SIZES = [dict(batch=6, seq=9, classes=4, d=4), dict(batch=3, seq=20, classes=2, d=1)]


def inputs_for(model, graph, sizes, seed=3):
    return random_inputs(model.bert, graph, **sizes, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sizes", SIZES, ids=str)
def test_serve_matches_torch(model, sizes):
    inputs = inputs_for(model, "serve", sizes)
    expected = model.bert64.encode_z(*float64(inputs, "serve"))
    assert_close(f"{model.name} serve embeddings", model.run("serve", inputs)["embeddings"], expected)


@pytest.mark.parametrize("det", DETS)
@pytest.mark.parametrize("sizes", SIZES, ids=str)
def test_one_det_graph_matches_torch_and_serve(model, det, sizes):
    """serve_<det> gives every row what serve gives a row of that DET, and what PyTorch gives."""
    inputs = inputs_for(model, "serve", sizes)
    inputs["det_select"] = torch.zeros_like(inputs["det_select"])
    inputs["det_select"][:, DETS.index(det)] = 1.0
    graph = f"serve_{det}"
    actual = model.run(graph, inputs)["embeddings"]
    assert_close(f"{model.name} {graph} vs serve", actual, model.run("serve", inputs)["embeddings"])
    expected = model.bert64.encode_one_det(det, *float64(inputs, graph))
    assert_close(f"{model.name} {graph} embeddings", actual, expected)


@pytest.mark.parametrize("sizes", SIZES, ids=str)
def test_plain_matches_torch(model, sizes):
    inputs = inputs_for(model, "plain", sizes)
    expected = model.bert64.encode(*float64(inputs, "plain"))
    assert_close(f"{model.name} plain embeddings", model.run("plain", inputs)["embeddings"], expected)


@pytest.mark.parametrize("sizes", SIZES, ids=str)
def test_grad_matches_torch(model, sizes):
    inputs = inputs_for(model, "grad", sizes)
    expected = model.bert64.loss_and_grads(*float64(inputs, "grad"), logit_scale=model.manifest["logit_scale"])
    actual = model.run("grad", inputs)
    for name, want in zip(IO["grad"]["outputs"], expected):
        assert_close(f"{model.name} grad {name}", actual[name], want)
    # The -1e9 of masked classes dominates max|b| above; check the logits of each row's task on their own.
    task = inputs["class_mask"].bool().numpy()
    assert_close(f"{model.name} grad logits of task classes", actual["logits"][task], expected[1][task])
    # The loss is the weighted cross-entropy of the graph's own logits.
    logits = actual["logits"].astype(np.float64)
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    nll = -log_softmax[np.arange(len(logits)), inputs["labels"].numpy()]
    assert_close(f"{model.name} grad loss from its logits", actual["loss"], (nll * inputs["row_weight"].numpy()).sum())


def test_rows_without_det_get_no_gradient(model):
    inputs = inputs_for(model, "grad", SIZES[0])  # rows cycle lora, adapter, prefix, none
    grad_z = model.run("grad", inputs)["grad_z"]
    none = inputs["det_select"].sum(1) == 0
    assert none.any() and (grad_z[none.numpy()] == 0).all()
    assert (np.abs(grad_z[~none.numpy()]).max(1) > 0).all()


def test_dets_change_the_embedding(model):
    """Guards against a plug point that silently does nothing: every DET moves its rows away from plain BERT."""
    inputs = inputs_for(model, "serve", SIZES[0])
    serve, plain = model.run("serve", inputs)["embeddings"], model.run("plain", inputs)["embeddings"]
    moved = np.abs(serve - plain).max(1)
    with_det = inputs["det_select"].sum(1).numpy() > 0
    assert (moved[with_det] > 1e-3).all() and (moved[~with_det] < 1e-5).all(), moved


def test_mixed_batch_equals_separate_runs(model):
    """One batch mixing lora, adapter, prefix and none rows equals one run per DET. The loss is a weighted sum
    over rows, so the sub-batches' losses and U/base gradients add up to the mixed batch's."""
    inputs = inputs_for(model, "grad", dict(batch=8, seq=12, classes=3, d=4), seed=5)
    mixed_serve = model.run("serve", inputs)["embeddings"]
    mixed = model.run("grad", inputs)
    summed = {name: 0.0 for name in IO["grad"]["outputs"] if name.startswith("grad_") and name != "grad_z"}
    summed["loss"] = 0.0
    for column in range(4):  # lora, adapter, prefix, none
        rows = torch.nonzero(torch.arange(8) % 4 == column).flatten()
        part = {name: t[rows] if DIMS[name][0] == "batch" else t for name, t in inputs.items()}
        assert_close(f"{model.name} mixed vs separate serve", mixed_serve[rows], model.run("serve", part)["embeddings"])
        separate = model.run("grad", part)
        for name in ("logits", "embeddings", "grad_z"):
            assert_close(f"{model.name} mixed vs separate grad {name}", mixed[name][rows], separate[name])
        for name in summed:
            summed[name] = summed[name] + separate[name]
    for name, total in summed.items():
        assert_close(f"{model.name} mixed vs separate grad {name}", mixed[name], total)


@pytest.mark.parametrize("graph", list(IO))
def test_only_standard_ops(model, graph):
    onnx_model = onnx.load(str(model.dir / model.manifest["graphs"][graph]))
    assert [(o.domain, o.version) for o in onnx_model.opset_import] == [("", 18)]
    assert {node.domain for node in onnx_model.graph.node} == {""}
    assert not onnx_model.functions
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx_model.graph.initializer)
    io = model.manifest["graph_io"][graph]
    assert [i.name for i in onnx_model.graph.input] == IO[graph]["inputs"] == io["inputs"]
    assert [o.name for o in onnx_model.graph.output] == IO[graph]["outputs"] == io["outputs"]
