"""The README's examples run as written."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def python_block(heading: str) -> str:
    """The first ```python block under a README heading."""
    section = README.read_text().split(f"\n## {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_session_runs_as_written(real_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block("Python API"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "test accuracy" in out and "+-" in out
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and (tmp_path / "folds.png").stat().st_size > 5_000
    assert len(list((tmp_path / "runs").iterdir())) == 2  # the train run and the cv run
