"""Trainer resume: a run interrupted after epoch 2 and resumed equals a run that never stopped
(parameters, buffers and the logged history), for BYOL (EMA target + LARS) and MoCo (queue)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import collapselab
from collapselab.config import config_from_dict
from collapselab.engine import load_checkpoint, read_metrics, save_checkpoint
from collapselab.engine.trainer import Trainer, TrainingError
from collapselab.evaluation import append_to_summary
from collapselab.runs import RunFolder

torch.set_num_threads(1)

EPOCHS = 4
STOP_AFTER = 2
# per-run measurements of time, not of training: they differ between any two runs
TIMING_KEYS = {"img_per_s", "epoch_time_s", "wall_time_s", "train_time_s", "throughput_img_per_s"}


def tiny(out_dir: Path, name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for a run of a few seconds on digits (2 steps per epoch, width-8 CNN)."""
    settings: dict[str, Any] = {
        "run": {"name": name, "out_dir": str(out_dir)},
        "train": {"epochs": EPOCHS, "threads": 1, "max_steps_per_epoch": 2},
        "data": {"batch_size": 64},
        "model": {"backbone_args": {"width": 8}},
        "log": {"progress": False, "every": 1, "tensorboard": False},
        "eval": {"final": False, "knn_every": 0},
        "monitor": {"probe_size": 64},
    }
    for section, values in sections.items():
        settings[section] = {**settings.get(section, {}), **values}
    return settings


def interrupt_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make the trainer raise KeyboardInterrupt right after it saved the checkpoint of ``epoch``."""
    original = Trainer._save

    def save_then_interrupt(self: Trainer) -> None:
        original(self)
        if self.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save", save_then_interrupt)


def without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS and "time" not in k} for r in records]


def straight_and_resumed(tmp_path: Path, method: str,
                         overrides: list[str]) -> tuple[collapselab.Run, collapselab.Run]:
    """Run ``method`` for 4 epochs straight, and again interrupted after epoch 2 then resumed."""
    straight = collapselab.train(method, "digits", overrides=overrides, **tiny(tmp_path, "straight"))
    with pytest.MonkeyPatch.context() as m:
        interrupt_after_epoch(m, STOP_AFTER)
        with pytest.raises(KeyboardInterrupt):
            collapselab.train(method, "digits", overrides=overrides, **tiny(tmp_path, "resumed"))
    run_dir = tmp_path / "resumed"
    interrupted = json.loads((run_dir / "summary.json").read_text())
    assert interrupted["status"] == "interrupted"
    assert interrupted["epochs_completed"] == STOP_AFTER
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == STOP_AFTER
    resumed = collapselab.train(resume=run_dir)
    assert resumed.dir == run_dir
    return straight, resumed


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{key} differs")
        else:
            assert torch.equal(a[key], b[key]), f"{key} differs"


def assert_same_history(straight_dir: Path, resumed_dir: Path) -> None:
    a, b = read_metrics(straight_dir), read_metrics(resumed_dir)
    assert [(r["step"], r["kind"]) for r in b] == [(r["step"], r["kind"]) for r in a]
    assert [r.get("lr") for r in b] == [r.get("lr") for r in a]
    assert [r.get("loss", math.nan) for r in b] == pytest.approx(
        [r.get("loss", math.nan) for r in a], abs=1e-6, nan_ok=True)
    for got, want in zip(without_timing(b), without_timing(a), strict=True):
        assert got.keys() == want.keys(), f"step {want['step']}"
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, abs=1e-6), f"step {want['step']}: {key}"
            else:
                assert got[key] == value, f"step {want['step']}: {key}"


@pytest.fixture(scope="module")
def byol_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[collapselab.Run, collapselab.Run]:
    return straight_and_resumed(tmp_path_factory.mktemp("byol"), "byol", [])


@pytest.fixture(scope="module")
def moco_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[collapselab.Run, collapselab.Run]:
    # a queue smaller than the run's 8 batches of 64 keys, so it wraps around before the interrupt
    return straight_and_resumed(tmp_path_factory.mktemp("moco"), "moco", ["method.queue_size=96"])


@pytest.mark.parametrize("method", ["byol", "moco"])
def test_resume_after_interrupt_equals_uninterrupted_run(request: pytest.FixtureRequest, method: str) -> None:
    straight, resumed = request.getfixturevalue(f"{method}_runs")

    assert resumed.summary["status"] == "completed"
    assert resumed.summary["epochs_completed"] == straight.summary["epochs_completed"] == EPOCHS
    assert resumed.summary["steps"] == straight.summary["steps"]
    state_a, state_b = straight.method.state_dict(), resumed.method.state_dict()
    if method == "byol":
        assert any(k.startswith("target.") for k in state_a), "BYOL should carry an EMA target"
    else:
        assert any("queue" in k for k in state_a), "MoCo should carry its queue as a buffer"
    assert_same_state(state_a, state_b)
    assert resumed.config == dataclasses.replace(straight.config, run=resumed.config.run)


def test_resumed_metrics_equal_uninterrupted_metrics(byol_runs: tuple[collapselab.Run, collapselab.Run]) -> None:
    straight, resumed = byol_runs
    epoch_lines = [r["epoch"] for r in read_metrics(resumed.dir) if r["kind"] == "epoch"]
    assert epoch_lines == list(range(1, EPOCHS + 1))
    assert_same_history(straight.dir, resumed.dir)


def test_resumed_spectra_and_checks_equal_uninterrupted_ones(
        byol_runs: tuple[collapselab.Run, collapselab.Run]) -> None:
    straight, resumed = (RunFolder(run.dir) for run in byol_runs)
    a, b = straight.spectra(), resumed.spectra()
    assert sorted(a) == sorted(b) == ["emb", "repr"]
    for name in a:
        steps = [int(s) for s in a[name][0]]
        assert steps == [int(s) for s in b[name][0]]
        assert len(steps) == EPOCHS + 1 and len(set(steps)) == len(steps)  # init + one per epoch
        np.testing.assert_allclose(b[name][1], a[name][1], rtol=1e-5, atol=1e-9)
    assert straight.checks()["emb"]["step"] == resumed.checks()["emb"]["step"] == steps


def test_eval_scores_survive_a_resume(tmp_path: Path) -> None:
    """Scores another command merged into summary.json (collapselab eval's linear probe) are
    kept when --resume rewrites the summary, but as scores of the step they were measured at:
    once training went on they move to ``eval_earlier[step]`` and ``eval`` holds only scores of
    the current weights; other tools' keys are kept."""
    first = collapselab.train("byol", "digits", **tiny(tmp_path, "kept", train={"epochs": 1}))
    append_to_summary(first.dir, {"linear_top1": 0.5, "nmi": 0.25})
    RunFolder(first.dir).write_summary({"note": "written by another tool"})
    assert RunFolder(first.dir).summary()["eval"]["linear_top1"] == 0.5  # same weights: merged
    resumed = collapselab.train(resume=first.dir, overrides=["train.epochs=2"])
    on_disk = RunFolder(first.dir).summary()
    earlier = on_disk["eval_earlier"][str(first.summary["steps"])]
    assert earlier["linear_top1"] == 0.5 and earlier["nmi"] == 0.25 and earlier["step"] == first.summary["steps"]
    assert "linear_top1" not in on_disk["eval"] and on_disk["eval"]["step"] == resumed.summary["steps"] > first.summary["steps"]
    assert on_disk["note"] == "written by another tool"
    assert on_disk["epochs_completed"] == resumed.summary["epochs_completed"] == 2


def test_resume_can_extend_a_finished_run(tmp_path: Path) -> None:
    first = collapselab.train("byol", "digits", **tiny(tmp_path, "short", train={"epochs": 1}))
    assert first.summary["epochs_completed"] == 1
    longer = collapselab.train(resume=first.dir, overrides=["train.epochs=2"])
    assert longer.summary["status"] == "completed"
    assert longer.summary["epochs_completed"] == 2
    assert load_checkpoint(first.dir / "checkpoints" / "last.pt")["epoch"] == 2


def test_resuming_with_another_augmentation_backend_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = collapselab.train("byol", "digits", **tiny(tmp_path, "b", train={"epochs": 1},
                                                         data={"augment_backend": "torch"}))
    assert load_checkpoint(first.dir / "checkpoints" / "last.pt")["augment_backend"] == "torch"
    capsys.readouterr()
    collapselab.train(resume=first.dir, overrides=["train.epochs=2"])  # same backend: silent
    assert "augmentation backend" not in capsys.readouterr().err
    state_path = first.dir / "checkpoints" / "last.pt"
    state = load_checkpoint(state_path)
    state["augment_backend"] = "native"  # as if the first part had run with the native kernel
    save_checkpoint(state_path, state)
    collapselab.train(resume=first.dir, overrides=["train.epochs=3"])
    err = capsys.readouterr().err
    assert "made by the 'native' augmentation backend and now by 'torch'" in err
    assert "data.augment_backend=native" in err


def test_config_yaml_changes_only_with_a_checkpoint_of_the_resumed_run(tmp_path: Path) -> None:
    """config.yaml is the config of the latest checkpoint: a resume that trains nothing, or that
    diverges before its first epoch ends, leaves it as it was, so a plain resume starts again from
    what last.pt was trained with; a resume that saves a checkpoint records its overrides."""
    run_dir = tmp_path / "r"
    collapselab.train("byol", "digits", **tiny(tmp_path, "r", train={"epochs": 1}))

    def lr_in_yaml() -> float:
        return float(config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text())).optim.lr)

    original = lr_in_yaml()

    collapselab.train(resume=run_dir, optim={"lr": original / 2})  # completed: nothing to train
    assert lr_in_yaml() == original

    with pytest.raises(TrainingError, match=r"nan|inf|finite"):
        collapselab.train(resume=run_dir, train={"epochs": 2}, optim={"lr": 1e30})
    assert lr_in_yaml() == original

    collapselab.train(resume=run_dir, train={"epochs": 2}, optim={"lr": original / 2})
    assert lr_in_yaml() == original / 2
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
