"""The Python examples in docs/theory.md run as written and print exactly what the text says.

Every top-level ``print(...)`` line of an example ends in a comment giving what it prints (after
the last ':' when the comment explains first, e.g. ``# both modes at p*₊: [0.61222, 0.61222]``).
The example's output must be exactly those lines, in order: line for line, whole lines only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "theory.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def promised_lines(example: str) -> list[str]:
    """What each print line of ``example`` promises, in order; a print without a comment fails."""
    promised = []
    for line in example.splitlines():
        if line.startswith("print("):
            assert "#" in line, f"docs/theory.md: print without its documented output: {line!r}"
            promised.append(line.split("#", 1)[1].split(":")[-1].strip())
    return promised


def test_theory_doc_has_examples_that_each_promise_output():
    assert len(EXAMPLES) >= 4
    assert all(promised_lines(example) for example in EXAMPLES)


def test_promises_are_read_line_by_line():
    example = 'x = 3\nprint(x)  # value: 3\nprint("a", x)  # a 3\n'
    assert promised_lines(example) == ["3", "a 3"]


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_theory_doc_example_prints_exactly_what_the_text_says(index, capsys):
    exec(compile(EXAMPLES[index], f"{DOC}:example{index}", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert out.splitlines() == promised_lines(EXAMPLES[index])
