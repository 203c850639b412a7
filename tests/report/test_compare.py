"""compare: rows, deltas against the first run, config differences, CSV, the command."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from collapselab._validation import InputError
from collapselab.cli import EXIT_OK, EXIT_USAGE, main
from collapselab.report import comparison, config_differences, format_table, to_csv
from collapselab.report.compare import csv_columns


def test_a_run_compared_with_itself_has_zero_deltas_and_no_config_differences(make_run) -> None:
    run = make_run("same", collapse=True)
    c = comparison([run.path, run.path])
    assert c.config_differences == {}
    assert c.rows[0] == c.rows[1]
    assert c.deltas[1] and all(value == 0 for value in c.deltas[1].values())
    assert "config differences: none" in format_table(c)


def test_runs_differing_in_one_key_list_exactly_that_key(make_run) -> None:
    a, b = make_run("a"), make_run("b", optim__lr=0.25)  # run.name differs too, and is left out
    c = comparison([a, b.path])
    assert c.config_differences == {"optim.lr": [1.0, 0.25]}
    table = format_table(c)
    assert "optim.lr" in table and "run.name" not in table


def test_columns_hold_the_scores_verdicts_and_final_ranks(make_run) -> None:
    healthy, collapsed = make_run("h"), make_run("c", collapse=True)
    c = comparison([healthy.path, collapsed.path])
    for column in ("name", "method", "dataset", "status", "steps", "final_loss", "knn_top1",
                   "baseline_pixels_knn_top1", "baseline_random_knn_top1", "worst_verdict",
                   "effective_rank/emb", "effective_rank/repr", "train_time_s"):
        assert column in c.columns
    assert [r["worst_verdict"] for r in c.rows] == ["healthy", "collapsed"]
    assert c.rows[1]["effective_rank/emb"] == pytest.approx(30.0 * 0.1)
    assert c.deltas[1]["effective_rank/emb"] == pytest.approx(3.0 - 25.0)
    assert "linear_top1" not in c.columns
    assert "worst_verdict" not in c.deltas[1]  # text columns get no delta


def test_optional_scores_appear_when_one_run_has_them(make_run) -> None:
    a, b = make_run("a"), make_run("b")
    b.update_summary("eval", {"linear_top1": 0.97, "nmi": 0.8})
    c = comparison([a, b])
    assert c.rows[0]["linear_top1"] is None and c.rows[1]["nmi"] == 0.8
    assert c.deltas[1]["linear_top1"] is None


def test_config_differences_flatten_and_mark_missing_keys() -> None:
    diff = config_differences([{"a": {"b": 1, "c": [1, 2]}, "run": {"name": "x"}},
                               {"a": {"b": 1, "c": [1, 3], "d": True}, "run": {"name": "y"}}])
    assert diff == {"a.c": [[1, 2], [1, 3]], "a.d": ["<missing>", True]}


def test_csv_round_trip(make_run, tmp_path: Path) -> None:
    c = comparison([make_run("a"), make_run("b", collapse=True, optim__lr=0.5)])
    path = tmp_path / "out.csv"
    to_csv(c, path)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == csv_columns(c) and len(rows) == 2
    for row, original, delta in zip(rows, c.rows, c.deltas, strict=True):
        for column in c.columns:
            value = original[column]
            if isinstance(value, float):
                assert float(row[column]) == value  # full precision
            else:
                assert row[column] == ("" if value is None else str(value))
        for column, value in delta.items():
            assert (row[f"delta/{column}"] == "") if value is None else math.isclose(float(row[f"delta/{column}"]), value)
    assert [r["config.optim.lr"] for r in rows] == ["1.0", "0.5"]
    stream = io.StringIO()
    to_csv(c, stream)
    assert stream.getvalue() == path.read_text()


def test_no_runs_or_a_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no run folders"):
        comparison([])
    with pytest.raises(InputError, match="no such run folder"):
        comparison([tmp_path / "missing"])


def test_compare_command_table_csv_and_exit_codes(make_run, tmp_path: Path, capsys) -> None:
    a, b = make_run("a"), make_run("b", optim__lr=0.5)
    assert main(["compare", str(a.path), str(b.path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "optim.lr" in out and "knn_top1" in out
    assert main(["compare", str(a.path), str(b.path), "--csv", "-"]) == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in rows] == ["a", "b"]
    target = tmp_path / "c.csv"
    assert main(["compare", str(a.path), str(b.path), "--csv", str(target)]) == EXIT_OK
    assert "knn_top1" in capsys.readouterr().out and target.read_text().startswith("name,")
    for bad in ([str(tmp_path / "missing")], [str(a.path), str(tmp_path)]):
        assert main(["compare", *bad]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:  # no RUN_DIR: argparse's usage error
        main(["compare"])
    assert exit_info.value.code == EXIT_USAGE


def test_csv_to_a_directory_is_a_one_line_error_before_the_table(make_run, tmp_path: Path, capsys) -> None:
    a, b = make_run("a"), make_run("b", optim__lr=0.5)
    for target in (str(tmp_path), str(tmp_path / "new") + "/"):
        assert main(["compare", str(a.path), str(b.path), "--csv", target]) == EXIT_USAGE
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert captured.err.startswith(f"error: --csv {target}: ") and "directory" in captured.err
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(InputError, match="is a directory"):
        to_csv(comparison([a.path]), tmp_path)


def test_compare_into_a_closed_pipe_exits_quietly(make_run) -> None:
    import os
    import subprocess
    import sys

    a, b = make_run("a"), make_run("b", optim__lr=0.5)
    read, write = os.pipe()
    os.close(read)  # the reader (`| head`) is gone before the table is written
    proc = subprocess.run([sys.executable, "-m", "collapselab", "compare", str(a.path), str(b.path)],
                          stdout=write, stderr=subprocess.PIPE, text=True, check=False)
    os.close(write)
    assert proc.stderr == "" and proc.returncode == 141
