"""`collapselab eval`: features files, table and JSON output, exit codes, clear errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from collapselab.commands import eval as eval_command
from collapselab.data import get_dataset


def _main(argv: list[str]) -> int:
    """The `collapselab` dispatcher with this subcommand registered (independent of cli.py's list)."""
    parser = argparse.ArgumentParser(prog="collapselab")
    eval_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def features_file(tmp_path_factory) -> Path:
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    projection = np.random.default_rng(0).normal(size=(64, 12))
    path = tmp_path_factory.mktemp("features") / "digits_features.npz"
    np.savez(
        path,
        train_features=train.images.reshape(len(train), -1).numpy() @ projection,
        train_labels=train.labels.numpy(),
        test_features=test.images.reshape(len(test), -1).numpy() @ projection,
        test_labels=test.labels.numpy(),
    )
    return path


def test_json_output_holds_the_requested_protocols_only(features_file, capsys):
    code = _main(
        ["eval", "--features", str(features_file), "--protocol", "knn", "--k", "20", "--json"]
    )
    results = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(results) == {"knn_top1", "knn_top5", "knn_k", "knn_temperature"} and 0.5 < results["knn_top1"] <= 1.0
    assert results["knn_k"] == 20 and results["knn_temperature"] == 0.1


def test_a_k_larger_than_the_bank_is_capped_and_the_k_used_is_printed(features_file, capsys):
    bank = len(get_dataset("digits", "train"))
    code = _main(["eval", "--features", str(features_file), "--protocol", "knn", "--k", str(bank + 1000)])
    err = capsys.readouterr().err
    assert code == 0
    assert f"using k={bank}" in err and f"kNN: k={bank} neighbours" in err and f"k={bank + 1000} neighbours" not in err


def test_table_puts_the_raw_pixel_baseline_beside_the_features(features_file, capsys):
    code = _main(
        [
            "eval",
            "--features",
            str(features_file),
            "--dataset",
            "digits",
            "--protocol",
            "knn",
            "--protocol",
            "clustering",
            "--n-init",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split() == ["features", "raw", "pixels"]
    assert [row.split()[0] for row in rows] == ["kNN", "kNN", "k-means", "k-means", "k-means"]


def test_a_folder_without_a_checkpoint_exits_2_naming_the_expected_file(tmp_path, capsys):
    code = _main(["eval", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "checkpoints" / "last.pt") in err and "finished an epoch" in err


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"train_features": np.zeros((4, 2))}, "missing train_labels"),
        (
            {
                "train_features": np.full((4, 2), np.nan),
                "train_labels": np.arange(4) % 2,
                "test_features": np.zeros((2, 2)),
                "test_labels": np.arange(2),
            },
            "8 non-finite",
        ),
    ],
)
def test_bad_features_file_exits_2_with_the_reason(tmp_path, capsys, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    assert _main(["eval", "--features", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_and_missing_source_exit_2(tmp_path, capsys):
    assert _main(["eval", "--features", str(tmp_path / "absent.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert _main(["eval"]) == 2
    assert "--features FILE" in capsys.readouterr().err


def test_l2_accepts_comma_separated_candidates_and_rejects_non_numbers(features_file, capsys):
    argv = ["eval", "--features", str(features_file), "--protocol", "linear", "--json"]
    assert _main([*argv, "--l2", "1e-4,1e-2"]) == 0
    searched = json.loads(capsys.readouterr().out)
    assert _main([*argv, "--l2", "1e-4"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert set(searched) == set(single) == {"linear_top1", "linear_train_top1"}
    with pytest.raises(SystemExit):
        _main([*argv, "--l2", "1e-4,abc"])


def test_features_of_another_dataset_exit_2_with_a_fix_for_the_command_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "other.npz"
    np.savez(path, train_features=rng.normal(size=(40, 4)), train_labels=np.arange(40) % 2,
             test_features=rng.normal(size=(20, 4)), test_labels=np.arange(20) % 2)
    assert _main(["eval", "--features", str(path), "--dataset", "digits", "--protocol", "knn"]) == 2
    err = capsys.readouterr().err
    assert "do not match dataset 'digits'" in err and "leave out --dataset" in err
    assert err.count("\n") == 1


def test_text_labels_in_a_features_file_score_as_their_classes(features_file, tmp_path, capsys):
    with np.load(features_file) as archive:
        arrays = {key: archive[key] for key in archive.files}
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    named = tmp_path / "named.npz"
    np.savez(named, **{**arrays, "train_labels": names[arrays["train_labels"]],
                       "test_labels": names[arrays["test_labels"]]})
    argv = ["--protocol", "knn", "--k", "20", "--json"]
    assert _main(["eval", "--features", str(features_file), *argv]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert _main(["eval", "--features", str(named), *argv]) == 0
    assert json.loads(capsys.readouterr().out) == expected


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--protocol", "clustering", "--n-init", "0"], "n_init must be a positive whole number"),
        (["--protocol", "clustering", "--n-init", "-3"], "n_init must be a positive whole number"),
        (["--protocol", "clustering", "--seed", "-1"], "seed must be a whole number in [0, "),
        (["--protocol", "knn", "--k", "0"], "k must be a positive whole number"),
        (["--protocol", "knn", "--temperature", "inf"], "temperature must be > 0 and finite"),
        (["--protocol", "linear", "--l2", "nan"], "l2 must be >= 0 and finite"),
        (["--protocol", "linear", "--l2", "inf"], "l2 must be >= 0 and finite"),
    ],
)
def test_bad_numeric_options_exit_2_with_one_line(features_file, capsys, option, message):
    assert _main(["eval", "--features", str(features_file), *option]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {message}") and captured.err.count("\n") == 1
    assert captured.out == ""


def test_a_features_file_given_as_the_run_says_to_use_features(features_file, capsys):
    assert _main(["eval", str(features_file)]) == 2
    err = capsys.readouterr().err
    assert "this is a features file" in err and f"--features {features_file}" in err
    assert err.count("\n") == 1 and "inline_container" not in err


def _unwritable_run(tmp_path, monkeypatch) -> Path:
    """A run folder source (linear backbone on digits, no training) for `collapselab eval RUN`."""
    import torch

    from collapselab.evaluation import api

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}\n")
    source = api.CheckpointSource(
        model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8)),
        dataset="digits", run_dir=run_dir, cache=run_dir / "features.npz", step=1,
    )
    monkeypatch.setattr(api, "load_checkpoint_source", lambda path: source)
    return run_dir


@pytest.mark.parametrize("as_json", [False, True])
def test_scores_are_printed_when_the_summary_cannot_be_written(tmp_path, monkeypatch, capsys, as_json):
    import errno

    from collapselab import runs

    run_dir = _unwritable_run(tmp_path, monkeypatch)

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(runs, "write_atomic", denied)
    argv = ["eval", str(run_dir), "--protocol", "knn", "--no-baselines", "--k", "5"]
    assert _main(argv + (["--json"] if as_json else [])) == 2
    captured = capsys.readouterr()
    if as_json:
        assert 0.0 < json.loads(captured.out)["knn_top1"] <= 1.0
    else:
        assert "kNN top-1" in captured.out and "scores merged" not in captured.out
    assert captured.err.strip().splitlines()[-1] == (
        f"error: the scores could not be merged into {run_dir / 'summary.json'} (Permission "
        "denied); they were computed but are not recorded there"
    )


def test_a_read_only_run_folder_prints_the_scores_then_exits_2(tmp_path, monkeypatch, capsys):
    import os

    run_dir = _unwritable_run(tmp_path, monkeypatch)
    run_dir.chmod(0o555)
    try:
        if os.access(run_dir, os.W_OK):
            pytest.skip("running as root: chmod does not make the folder read-only")
        assert _main(["eval", str(run_dir), "--protocol", "knn", "--no-baselines", "--k", "5"]) == 2
        captured = capsys.readouterr()
        assert "kNN top-1" in captured.out
        assert "could not be merged into" in captured.err.strip().splitlines()[-1]
    finally:
        run_dir.chmod(0o755)
