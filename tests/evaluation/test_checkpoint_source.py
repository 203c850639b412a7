"""evaluate() and `collapselab eval` on a run folder or a trainer checkpoint (load_checkpoint_source)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.cli import main
from collapselab.data import get_dataset
from collapselab.data.augment import channel_stats
from collapselab.engine.checkpoint import CheckpointError, save_checkpoint
from collapselab.engine.trainer import Normalizer, Run
from collapselab.evaluation import api, evaluate
from collapselab.evaluation.api import load_checkpoint_source

FAST = dict(protocols=("knn",), baselines=(), k=20)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """One epoch of BYOL on digits (a few seconds), with an epoch checkpoint beside last.pt."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return collapselab.train(
            "byol",
            "digits",
            run={"name": "r", "out_dir": str(tmp_path_factory.mktemp("runs"))},
            train={"epochs": 1, "threads": 1},
            checkpoint={"every": 1},
            log={"progress": False},
            eval={"final": False, "knn_every": 0},
            monitor={"enabled": False},
        )
    finally:
        torch.set_num_threads(threads)


def test_run_folder_scores_equal_the_trained_backbone_scored_directly(run):
    train_images = get_dataset("digits", "train").images
    normalizer = Normalizer(*channel_stats(train_images))  # the trainer's recipe, recomputed
    direct = evaluate(run.backbone, "digits", transform=normalizer, **FAST)
    from_folder = evaluate(run.dir, **FAST)
    assert from_folder["knn_top1"] == pytest.approx(direct["knn_top1"], abs=1e-12)
    assert from_folder["knn_top5"] == pytest.approx(direct["knn_top5"], abs=1e-12)


def test_loaded_source_is_the_run_backbone_in_eval_mode_with_the_run_defaults(run):
    source = load_checkpoint_source(str(run.dir))
    assert not source.model.training
    assert source.dataset == "digits" and source.run_dir == run.dir
    assert source.cache == run.dir / "features.npz" and source.output_key is None
    expected = run.backbone.state_dict()
    loaded = source.model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key].cpu()) for key in expected)


def test_scores_are_merged_into_summary_beside_the_trainer_keys(run):
    results = evaluate(run.dir, **FAST)
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["eval"]["knn_top1"] == results["knn_top1"]
    assert summary["status"] == "completed" and summary["method"] == "byol"
    assert "epochs_completed" in summary and "diagnosis" in summary


def test_a_checkpoint_file_in_a_run_scores_the_same_and_reports_to_the_run(run):
    from_folder = evaluate(run.dir, **FAST)
    last = run.dir / "checkpoints" / "last.pt"
    assert evaluate(last, **FAST)["knn_top1"] == from_folder["knn_top1"]
    epoch = load_checkpoint_source(run.dir / "checkpoints" / "epoch_0001.pt")
    assert epoch.run_dir == run.dir and epoch.cache == run.dir / "features_epoch_0001.npz"


def test_a_kept_checkpoint_records_under_its_own_name_and_leaves_eval_alone(run):
    """eval of checkpoints/epoch_0001.pt: scores (with the weights' step and k) go to
    summary["eval_checkpoints"]["epoch_0001"]; summary["eval"] is the final model's, untouched."""
    evaluate(run.dir, **FAST)
    before = json.loads((run.dir / "summary.json").read_text())["eval"]
    scores = evaluate(run.dir / "checkpoints" / "epoch_0001.pt", protocols=("knn",), baselines=(), k=7)
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["eval"] == before and before["knn_k"] == 20
    entry = summary["eval_checkpoints"]["epoch_0001"]
    assert entry["knn_top1"] == scores["knn_top1"] and entry["knn_k"] == 7
    assert entry["step"] == run.summary["steps"] == before["step"]  # one epoch: the same weights as last.pt


def test_a_bare_checkpoint_file_has_no_run_folder_and_writes_nothing(run, tmp_path):
    copy = tmp_path / "model.pt"
    shutil.copy(run.dir / "checkpoints" / "last.pt", copy)
    source = load_checkpoint_source(copy)
    assert source.run_dir is None and source.cache is None
    assert evaluate(str(copy), **FAST)["knn_top1"] == evaluate(run.dir, **FAST)["knn_top1"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt"]


def test_a_second_evaluation_reads_the_feature_cache(run, monkeypatch):
    first = evaluate(run.dir, **FAST)
    assert (run.dir / "features.npz").is_file()

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were recomputed instead of read from the cache")

    monkeypatch.setattr(api, "extract_features", no_extraction)
    assert evaluate(run.dir, **FAST) == first


def test_a_missing_path_is_named(tmp_path):
    missing = tmp_path / "runs" / "nope"
    with pytest.raises(
        InputError, match=rf"{re.escape(str(missing))}: no such run folder or checkpoint file"
    ):
        evaluate(missing)


def test_a_folder_without_last_pt_names_the_expected_file(tmp_path):
    (tmp_path / "config.yaml").write_text("method: {name: byol}\n")
    expected = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(
        InputError, match=rf"{re.escape(str(expected))}.*may not have finished an epoch"
    ):
        evaluate(tmp_path)


def test_a_corrupt_checkpoint_says_what_was_being_done_and_where(run, tmp_path):
    copy = tmp_path / "last.pt"
    shutil.copy(run.dir / "checkpoints" / "last.pt", copy)
    with copy.open("r+b") as handle:  # a few bytes of garbage in the middle of the file
        handle.seek(copy.stat().st_size // 2)
        handle.write(b"\x00garbage\xff" * 4)
    with pytest.raises(
        CheckpointError, match=rf"loading the backbone for evaluation: {re.escape(str(copy))}"
    ):
        evaluate(copy)
    copy.write_bytes(b"not a checkpoint")
    with pytest.raises(
        CheckpointError, match=rf"loading the backbone for evaluation: {re.escape(str(copy))}"
    ):
        evaluate(copy)


def test_a_checkpoint_not_written_by_the_trainer_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "foreign.pt", {"weights": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"foreign\.pt: no 'config' or 'model' entry"):
        evaluate(path)


def test_cli_evaluates_a_run_folder_and_says_where_the_scores_went(run, capsys):
    code = main(["eval", str(run.dir), "--protocol", "knn", "--no-baselines", "--k", "20"])
    out = capsys.readouterr().out
    assert code == 0
    assert "kNN top-1" in out and f"{Path(run.dir) / 'summary.json'}" in out
    summary = json.loads((run.dir / "summary.json").read_text())
    assert "knn_top1" in summary["eval"]


def test_cli_reports_a_bad_checkpoint_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"garbage")
    assert main(["eval", str(bad)]) == 2
    assert f"{bad}" in capsys.readouterr().err
