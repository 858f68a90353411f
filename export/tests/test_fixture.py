"""The tiny fixture the Rust tests read: its tokenizer, and its references against the ONNX graphs."""

import json

from safetensors.torch import load_file
from tokenizers import Tokenizer

from common import IO, assert_close
from graphs import tokenize


def reference(tiny):
    return json.loads((tiny.dir / "reference.json").read_text()), load_file(str(tiny.dir / "reference.safetensors"))


def test_tokenizer_covers_any_text(tiny):
    tokenizer = Tokenizer.from_file(str(tiny.dir / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == tiny.manifest["config"]["vocab_size"]
    assert [tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    pair = tokenizer.encode("Hello, World!", "zebra-crossing 42")
    assert pair.tokens[0] == "[CLS]" and pair.tokens.count("[SEP]") == 2 and "[UNK]" not in pair.tokens
    first = pair.tokens.index("[SEP]") + 1  # [CLS] text [SEP] has type 0, text_pair [SEP] type 1
    assert pair.type_ids == [0] * first + [1] * (len(pair.tokens) - first)
    assert tokenizer.encode("東京").tokens == ["[CLS]", "[UNK]", "[UNK]", "[SEP]"]


def test_reference_tokenization(tiny):
    meta, tensors = reference(tiny)
    texts = [tuple(pair) if pair else text for text, pair in zip(meta["texts"], meta["pairs"])]
    ids = tokenize(tiny.dir / "tokenizer.json", texts, meta["max_seq_len"])
    for name, t in ids.items():
        assert t.equal(tensors[name]), name
    assert ids["input_ids"].shape[1] == meta["max_seq_len"], "the long row must be truncated"
    assert ids["token_type_ids"].any(1).sum() == sum(p is not None for p in meta["pairs"])


def test_onnx_reproduces_reference(tiny):
    """What the Rust parity tests check, here with ONNX Runtime."""
    meta, tensors = reference(tiny)
    for graph, names in meta["outputs"].items():
        outputs = tiny.run(graph, tensors)
        for output, stored in names.items():
            assert_close(f"tiny reference {graph} {output}", outputs[output], tensors[stored], meta["tolerance"])
        assert list(names) == IO[graph]["outputs"]
    task = tensors["class_mask"].bool()
    logits = tiny.run("grad", tensors)["logits"]
    assert_close("tiny reference grad logits of task classes", logits[task.numpy()], tensors["logits"][task])
