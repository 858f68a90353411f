import pytest

from common import ERRORS, MODEL_DIRS, Model


@pytest.fixture(scope="session", params=list(MODEL_DIRS))
def model(request) -> Model:
    """Each exported model in turn: the tiny fixture always, MiniLM once it has been exported."""
    if not (MODEL_DIRS[request.param] / "serve.onnx").exists():
        command = ".venv-export/bin/python export/export.py --out models/all-MiniLM-L6-v2"
        pytest.skip(f"{MODEL_DIRS[request.param]}/serve.onnx is absent; make it with `{command}` (1.5 minutes)")
    return Model.load(request.param)


@pytest.fixture(scope="session")
def tiny() -> Model:
    return Model.load("tiny")


def pytest_terminal_summary(terminalreporter):
    if ERRORS:
        terminalreporter.section("worst relative error per check, max|a - b| / max|b|")
        for label, error in sorted(ERRORS.items()):
            terminalreporter.write_line(f"{error:9.1e}  {label}")
