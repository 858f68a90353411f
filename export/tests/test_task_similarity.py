"""export/task_similarity.py on a data directory made from the fixture: an unseen task whose label descriptions are
an upstream task's finds that task nearest, at cosine 1, and every line ranks all upstream tasks, nearest first."""

import json
import shutil
import subprocess
import sys

from common import ROOT
from task_similarity import UNSEEN, UPSTREAM

FIXTURE = ROOT / "tests/fixtures/data"


def test_the_task_with_the_same_descriptions_is_nearest(tmp_path):
    data = tmp_path / "data"
    # Every task the script reads: sst2 and rte as in the fixture, the others with labels of their own.
    for index, task in enumerate((*UPSTREAM, *UNSEEN)):
        source = FIXTURE / ("sst2" if task in ("sst2", "mpqa") else "rte")
        shutil.copytree(source, data / task)
        if task not in ("sst2", "mpqa", "rte"):
            labels = [{"name": f"l{i}", "description": f"Topic {index}, label {i}: {task}."} for i in range(2)]
            (data / task / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "similarity.jsonl"
    subprocess.run([sys.executable, ROOT / "export/task_similarity.py", "--data", data, "--rows", "8",
                    "--out", out], capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["task"], line["kind"]) for line in lines] == [
        (task, kind) for task in UNSEEN for kind in ("labels", "texts")]
    for line in lines:
        cosines = [cosine for _, cosine in line["nearest"]]
        assert sorted(name for name, _ in line["nearest"]) == sorted(UPSTREAM)
        assert cosines == sorted(cosines, reverse=True)
    nearest = {(line["task"], line["kind"]): line["nearest"][0] for line in lines}
    assert nearest[("mpqa", "labels")] == ["sst2", 1.0]
    assert nearest[("mpqa", "texts")] == ["sst2", 1.0], "the same texts too"
    assert nearest[("rte", "labels")][1] < 1.0, "no upstream task has rte's descriptions"
