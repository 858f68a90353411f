"""export/upstream_codes.py on the tiny fixture: the code it writes decodes to the solution it came from, and the
Rust side reads it as a task that `tune --init` starts from."""

import json
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from common import ROOT
from encoder import DETS
from gradient_span import write_subspace

DATA = ROOT / "tests/fixtures/data"


def test_a_code_reproduces_its_solution_and_tune_starts_from_it(tiny, tmp_path):
    with safe_open(str(tiny.dir / "theta0.safetensors"), "np") as f:
        theta0 = {det: f.get_tensor(det) for det in DETS}
    subspace = tmp_path / "space.safetensors"
    write_subspace(Namespace(model=tiny.dir, det="lora", dim=4, subspace=subspace),
                   np.zeros((theta0["lora"].shape[0], 0)), theta0, "codes-d4")
    with safe_open(str(subspace), "np") as f:
        u = {det: f.get_tensor(f"U.{det}").astype(np.float64) for det in DETS}
    # An "upstream" solution whose δ is U c in every DET, stored as stage 0 stores it (f16 δ).
    code = np.array([0.5, -1.0, 2.0, 0.25])
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    for det in DETS:
        save_file({"delta": (u[det] @ code).astype(np.float16)}, str(solutions / f"sst2.{det}.safetensors"))
    out = tmp_path / "codes"
    run = subprocess.run([sys.executable, ROOT / "export/upstream_codes.py", "--subspace", subspace,
                          "--solutions", solutions, "--data", DATA, "--out", out],
                         capture_output=True, text=True, check=True)
    report = json.loads(run.stdout.splitlines()[0])
    assert report["task"] == "sst2" and report["delta_kept"] > 0.999
    task = json.loads((out / "sst2.json").read_text())
    assert np.allclose(task["z"], code, atol=1e-2)
    assert task["subspace"].startswith("codes-d4@") and task["labels"][0]["name"]
    binary = ROOT / "target/debug/deltaspace"
    if not binary.exists():  # scripts/test.sh builds it before pytest runs
        pytest.skip("target/debug/deltaspace is not built: the Rust side is unchecked")
    tuned = tmp_path / "tuned.json"
    tune = subprocess.run([binary, "tune", "--model", tiny.dir, "--subspace", subspace, "--data", DATA / "sst2",
                           "--det", "lora", "--head", "none", "--steps", "0", "--init", out / "sst2.json",
                           "--provider", "cpu", "--threads", "1", "--out", tuned],
                          capture_output=True, text=True)
    assert tune.returncode == 0, tune.stderr
    assert np.allclose(json.loads(tuned.read_text())["z"], task["z"], atol=1e-6)
