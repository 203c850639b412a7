"""The Python examples in README.md and docs/diagnostics.md run as written and give what they say.

Each block runs statement by statement, as a reader would type it; every bare expression whose
line ends in a comment that is a Python literal (``d.verdict  # {'complete': 'healthy', ...}``)
must evaluate to exactly that literal, and one written as alternatives (``# "healthy" | "warning"``)
to one of them. Each example also has its own test of what its result must be.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/diagnostics.md"]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def run_block(block: str, namespace: dict, name: str) -> list[tuple[str, object]]:
    """Execute ``block`` statement by statement; return (source line, value) of each bare
    expression, in order (a later assignment to the same name does not hide an earlier value)."""
    lines = block.splitlines()
    values: list[tuple[str, object]] = []
    for node in ast.parse(block).body:
        if isinstance(node, ast.Expr):
            code = compile(ast.Expression(node.value), name, "eval")
            values.append((lines[node.end_lineno - 1], eval(code, namespace)))
        else:
            exec(compile(ast.Module([node], type_ignores=[]), name, "exec"), namespace)
    return values


def value_of(values: list[tuple[str, object]], start: str):
    """The value of the one expression whose line starts with ``start``."""
    (value,) = [v for line, v in values if line.startswith(start)]
    return value


def documented_value(line: str):
    """The value a trailing comment promises: ('equal', literal), ('one of', [literals]) or None."""
    if "#" not in line:
        return None
    comment = line.split("#", 1)[1].strip()
    try:
        return ("equal", ast.literal_eval(comment))
    except (ValueError, SyntaxError):
        pass
    try:
        options = [ast.literal_eval(part.strip()) for part in comment.split("|")]
    except (ValueError, SyntaxError):
        return None
    return ("one of", options) if len(options) > 1 else None


def check_documented(values: list[tuple[str, object]]) -> int:
    """Assert every literal promise of the block; return how many there were."""
    checked = 0
    for line, value in values:
        promise = documented_value(line)
        if promise is None:
            continue
        kind, expected = promise
        if kind == "equal":
            assert value == expected, (line, value)
        else:
            assert value in expected, (line, value)
        checked += 1
    return checked


@pytest.fixture(scope="module")
def readme():
    """README's three blocks run in order in one namespace (later blocks use earlier imports)."""
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) == 3, "README.md: update these tests with its examples"
    namespace: dict = {"__name__": "__docs__"}
    results = []
    for k, block in enumerate(blocks):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            values = run_block(block, namespace, f"README.md:example{k}")
        results.append((values, out.getvalue(), dict(namespace)))
    return results


def test_every_doc_has_python_examples():
    for doc in DOCS:
        assert python_blocks(ROOT / doc), f"{doc} has no python example"


def test_readme_train_example_returns_a_completed_healthy_run_with_its_files(readme):
    values, _, namespace = readme[0]
    ((line, (knn, worst, run_dir)),) = values
    assert line.startswith('run.summary["eval"]["knn_top1"]')
    run = namespace["run"]
    assert run.summary["status"] == "completed" and run.summary["epochs_completed"] == 2
    # kNN top-1 on the ten digit classes: a probability, far above the 10 % of chance
    assert isinstance(knn, float) and 0.5 < knn <= 1.0
    assert worst == "healthy" and run.summary["alarms"] == []
    run_dir = Path(run_dir)
    assert run_dir.parent == Path("/tmp/collapselab-readme") and run_dir.name.startswith(
        "byol_digits"
    )
    assert {"config.yaml", "metrics.jsonl", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "summary.json").read_text())["eval"]["knn_top1"] == knn


def test_readme_diagnose_example_gives_the_documented_verdicts_and_ranks(readme):
    values, out, namespace = readme[1]
    assert check_documented(values) == 1  # d.verdict  # {'complete': 'healthy', ...}
    assert value_of(values, "print(d)") is None
    verdict = value_of(values, "d.verdict")
    ranks = value_of(values, 'd.metrics["effective_rank"]')
    assert verdict == {
        "complete": "healthy",
        "dimensional": "healthy",
        "cluster": "n/a",
        "intracluster": "n/a",
    }
    # isotropic Gaussian, 2000 × 128: every rank close to the 128 dimensions; srank ≤ erank always
    # (exponentials of the Rényi-2 and Shannon entropies of the normalised spectrum), and RankMe,
    # on singular values (square roots of the eigenvalues), sees the flattest spectrum
    erank, rankme, srank = ranks
    assert all(isinstance(r, float) for r in ranks)
    assert 110 < srank <= erank <= rankme <= 128
    # print(d): the verdict table, one line per mode, each anchored at the line start
    lines = out.splitlines()
    assert lines[0] == "Collapse diagnosis: 2000 samples x 128 dims"
    for mode, level in verdict.items():
        assert any(re.match(rf"\s+{mode}\s+{re.escape(level)}\b", line) for line in lines), mode
    # the second diagnosis: 0.001·z against a reference of the same scale has shrunk 10⁶× in
    # variance, complete collapse relative to the start (0.01·z, 10⁴×, sat on the collapsed
    # threshold and flipped with the unseeded draws); codes given, the cluster mode is judged
    again = namespace["d"]
    assert again.verdict["complete"] == "collapsed" and again.verdict["cluster"] != "n/a"
    assert math.isclose(
        again.metrics["total_variance"], 1e-6 * total_variance_of(namespace), rel_tol=1e-6
    )


def total_variance_of(namespace: dict) -> float:
    """Total variance of the README's z (the embedding the second diagnosis scales by 0.001)."""
    z = namespace["z"].double()
    return float(((z - z.mean(0)) ** 2).sum(1).mean())


def test_readme_monitor_example_checks_every_50_steps(readme):
    values, out, namespace = readme[2]
    assert values == [] and out == ""
    monitor = namespace["monitor"]
    assert monitor.every == 50
    assert [step for step in range(201) if monitor.should_run(step)] == [0, 50, 100, 150, 200]
    assert monitor.alarms == [] and monitor.first_unhealthy == {}


def test_diagnostics_quick_example_gives_a_healthy_json_able_diagnosis(capsys):
    block = python_blocks(ROOT / "docs/diagnostics.md")[0]
    assert "cl.diagnose(z)" in block
    namespace: dict = {"__name__": "__docs__"}
    values = run_block(block, namespace, "docs/diagnostics.md:example0")
    out = capsys.readouterr().out
    # d.verdict["dimensional"]  # "healthy" | "warning" | "collapsed" | "n/a"
    assert check_documented(values) == 1
    dimensional = value_of(values, 'd.verdict["dimensional"]')
    assert dimensional == "healthy"  # 1000 isotropic Gaussian points in 64 dimensions
    erank = value_of(values, 'd.metrics["effective_rank"]')
    assert isinstance(erank, float) and 55 < erank <= 64
    d = namespace["d"]
    assert all(isinstance(v, float) for v in d.metrics.values())  # "every measurement as a float"
    as_dict = value_of(values, "d.to_dict()")
    assert json.loads(json.dumps(as_dict)) == as_dict  # "JSON-able"
    assert out.splitlines()[0] == "Collapse diagnosis: 1000 samples x 64 dims"
    assert any(re.match(r"\s+dimensional\s+healthy\b", line) for line in out.splitlines())


def test_monitor_example_prints_the_alarms_it_promises(capsys) -> None:
    block = next(b for b in python_blocks(ROOT / "docs/diagnostics.md") if "CollapseMonitor(" in b)
    namespace: dict = {}
    values = run_block(block, namespace, "docs/diagnostics.md:monitor")
    out = capsys.readouterr().out
    assert "dimensional collapse WARNING" in out and "dimensional collapse COLLAPSED" in out
    # monitor.first_unhealthy["emb"]  # {'complete': 250, 'dimensional': 250}
    assert check_documented(values) == 1
    assert namespace["monitor"].first_unhealthy["emb"] == {"dimensional": 250, "complete": 250}
