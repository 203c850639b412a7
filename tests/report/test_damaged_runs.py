"""A damaged run folder still gets a report / comparison, with one warning line per damaged file."""

from __future__ import annotations

import json

import pytest

from collapselab.cli import main
from collapselab.report.data import load_run


def _damage(folder, how: str) -> str:
    """Damage one file of ``folder``; returns the file's name."""
    if how == "truncated summary":
        text = folder.summary_path.read_text()
        folder.summary_path.write_text(text[: len(text) // 2])
        return "summary.json"
    if how == "list summary":
        folder.summary_path.write_text("[1, 2]")
        return "summary.json"
    if how == "eval oops":
        summary = json.loads(folder.summary_path.read_text())
        folder.summary_path.write_text(json.dumps({**summary, "eval": "oops"}))
        return "summary.json"
    if how == "garbage lines":
        lines = folder.metrics_path.read_text().splitlines()
        lines[6] = "this is not json"
        lines.insert(9, "[1, 2, 3]")
        folder.metrics_path.write_text("\n".join(lines) + "\n")
        return "metrics.jsonl"
    if how == "garbage spectra":
        folder.spectra_path.write_bytes(b"not a zip file at all")
        return "spectra.npz"
    if how == "broken config":
        folder.config_path.write_text("method: [unclosed\n  : :\n")
        return "config.yaml"
    raise AssertionError(how)


DAMAGES = ["truncated summary", "list summary", "eval oops", "garbage lines", "garbage spectra", "broken config"]


@pytest.mark.parametrize("how", DAMAGES)
def test_report_warns_once_per_damaged_file_and_still_writes(make_run, capsys, how):
    folder = make_run("a")
    file = _damage(folder, how)
    assert main(["report", str(folder.path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {folder.path / file}: "), err
    html = folder.report_path.read_text()
    assert "could not be used" in html and file in html


@pytest.mark.parametrize("how", DAMAGES)
def test_compare_warns_once_per_damaged_file_and_still_prints_the_table(make_run, capsys, how):
    a, b = make_run("a"), make_run("b")
    file = _damage(b, how)
    assert main(["compare", str(a.path), str(b.path)]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {b.path / file}: "), err
    assert "a" in captured.out and "b" in captured.out


def test_garbage_metrics_lines_are_named_and_counted(make_run):
    folder = make_run("a")
    _damage(folder, "garbage lines")
    data = load_run(folder)
    assert data.damaged["metrics.jsonl"] == "line 7 is not JSON; skipped, and 1 more damaged line"
    assert data.train  # the sound lines are still read


def test_a_section_of_the_wrong_type_is_ignored_not_crashed_on(make_run, capsys):
    folder = make_run("a")
    summary = json.loads(folder.summary_path.read_text())
    folder.summary_path.write_text(json.dumps({**summary, "eval": "oops", "diagnosis": "x", "alarms": {}}))
    data = load_run(folder)
    assert "eval" not in data.summary and "diagnosis" not in data.summary and data.summary["status"] == "completed"
    assert "'eval' is a str, expected an object of scores" in data.damaged["summary.json"]
    assert main(["report", str(folder.path)]) == 0
    assert capsys.readouterr().err.count("\n") == 1


def test_a_sound_run_gives_no_warning(make_run, capsys):
    folder = make_run("a")
    assert main(["report", str(folder.path)]) == 0
    assert main(["compare", str(folder.path), str(make_run("b").path)]) == 0
    assert capsys.readouterr().err == ""
