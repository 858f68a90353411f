"""export/fp16.py on the tiny fixture: the float16 graphs keep the interface and stay close to float32."""

import json
import subprocess
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/tiny"


def test_fp16_graphs_keep_the_interface_and_the_embeddings(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "export/fp16.py"), "--model", str(TINY), "--out-dir", str(tmp_path), "--check"],
        capture_output=True,
        text=True,
        check=True,
    )
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    checks = [r for r in results if "max_abs" in r]
    assert {r["graph"] for r in checks} == {"serve_fp16.onnx", "plain_fp16.onnx"}
    for r in checks:
        assert not r["nan"], r
        assert r["max_abs"] < 2e-3 and r["min_cosine"] > 0.9999, r
    for graph in ("serve", "plain"):
        original = onnx.load(str(TINY / f"{graph}.onnx"), load_external_data=False).graph
        converted = onnx.load(str(tmp_path / f"{graph}_fp16.onnx")).graph
        signature = lambda g: [(v.name, v.type.tensor_type.elem_type) for v in list(g.input) + list(g.output)]  # noqa: E731
        assert signature(converted) == signature(original)
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in converted.initializer)
    # θ = base + U z stays float32: the MatMul of z with U_lora's transpose is not behind a Cast to float16.
    serve = onnx.load(str(tmp_path / "serve_fp16.onnx")).graph
    matmuls = [n for n in serve.node if n.op_type == "MatMul" and "z" in n.input]
    assert len(matmuls) == 3
