"""The Python examples in docs/theory.md run as written and print what the text says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "theory.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_theory_doc_has_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_theory_doc_example_runs(index, capsys):
    exec(compile(EXAMPLES[index], f"{DOC}:example{index}", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    # every "# value" comment at the end of a print line is what that line prints
    for line in EXAMPLES[index].splitlines():
        if line.startswith("print(") and "#" in line:
            promised = line.split("#", 1)[1].split(":")[-1].strip()
            assert promised in out, (promised, out)
