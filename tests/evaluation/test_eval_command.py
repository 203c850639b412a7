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
