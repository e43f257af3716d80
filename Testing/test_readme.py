"""The README stays true: its outside-Slicer Python snippet runs, its commands exist."""

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_snippet_runs(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    snippet = next(b for b in blocks if "compound(" in b)
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.volume.shape == result.coverage.shape == result.grid.shape_zyx
    assert np.count_nonzero(result.coverage) > 0.1 * result.coverage.size


def test_set_up_and_test_commands_exist_and_ci_calls_them():
    for script in ("scripts/setup_and_demo.sh", "scripts/test.sh"):
        assert f"bash {script}" in README
        assert (ROOT / script).exists()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/setup_and_demo.sh" in ci and "scripts/test.sh" in ci


def test_no_placeholders_left():
    assert not any(tag in README for tag in ("PARITY_TABLE", "PERF_TABLE", "STICK_"))
