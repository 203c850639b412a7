"""The Python examples in README.md and docs/diagnostics.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/diagnostics.md"]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("doc", DOCS)
def test_python_examples_run(doc: str, capsys) -> None:
    blocks = python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no python example"
    namespace: dict = {"__name__": "__docs__"}  # later blocks build on earlier ones, as a reader would
    for block in blocks:
        exec(compile(block, f"{doc}:example", "exec"), namespace)


def test_monitor_example_prints_the_alarms_it_promises(capsys) -> None:
    block = next(b for b in python_blocks(ROOT / "docs/diagnostics.md") if "CollapseMonitor(" in b)
    namespace: dict = {}
    exec(compile(block, "docs/diagnostics.md:monitor", "exec"), namespace)
    out = capsys.readouterr().out
    assert "dimensional collapse WARNING" in out and "dimensional collapse COLLAPSED" in out
    assert namespace["monitor"].first_unhealthy["emb"] == {"dimensional": 250, "complete": 250}
