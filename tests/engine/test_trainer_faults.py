"""Trainer faults: a non-finite loss stops the run with a message that names the step, the bad
term and the last good checkpoint; an interrupted checkpoint write keeps the previous one; a
corrupt or missing checkpoint is refused on resume; a used run folder is not overwritten."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import torch

import collapselab
from collapselab._validation import InputError
from collapselab.engine import CheckpointError, load_checkpoint
from collapselab.engine import checkpoint as checkpoint_module
from collapselab.engine.trainer import TrainingError
from collapselab.methods import BYOL, MethodOutput

torch.set_num_threads(1)


def tiny(out_dir: Path, name: str = "run", epochs: int = 4) -> dict[str, Any]:
    """Keyword arguments for a run of about a second on digits (2 steps per epoch, width-8 CNN)."""
    return {
        "run": {"name": name, "out_dir": str(out_dir)},
        "train": {"epochs": epochs, "threads": 1, "max_steps_per_epoch": 2},
        "data": {"batch_size": 64},
        "model": {"backbone_args": {"width": 8}},
        "log": {"progress": False, "tensorboard": False},
        "eval": {"final": False, "knn_every": 0},
        "monitor": {"probe_size": 64},
    }


def poison_byol_forward(monkeypatch: pytest.MonkeyPatch, from_step: int, term: bool) -> None:
    """From the ``from_step``-th training forward on (0-based, = the global step), make BYOL's loss
    NaN; with ``term``, through a NaN logged term that the loss is the sum of."""
    original = BYOL.forward
    calls = {"n": 0}

    def forward(self: BYOL, views: Any) -> MethodOutput:
        out = original(self, views)
        step, calls["n"] = calls["n"], calls["n"] + 1
        if step < from_step:
            return out
        if term:
            penalty = out.loss * float("nan")
            return MethodOutput(out.loss + penalty, out.tensors, {**out.scalars, "penalty": penalty.detach()})
        return MethodOutput(out.loss * float("nan"), out.tensors, out.scalars)

    monkeypatch.setattr(BYOL, "forward", forward)


# --------------------------------------------------------------------------- non-finite loss


@pytest.mark.parametrize("term", [False, True], ids=["loss", "logged_term"])
def test_nan_loss_stops_with_step_and_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            term: bool) -> None:
    poison_byol_forward(monkeypatch, from_step=5, term=term)  # the 6th step, the 2nd of epoch 3
    with pytest.raises(TrainingError) as info:
        collapselab.train("byol", "digits", **tiny(tmp_path))
    message = str(info.value)
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    assert "step 6 " in message  # counted from 1, as metrics.jsonl counts
    assert str(last) in message and "epoch 2" in message
    if term:
        assert "penalty=nan" in message
        assert "cosine=nan" not in message  # only the bad term is named as non-finite
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == message
    assert summary["epochs_completed"] == 2
    assert load_checkpoint(last)["epoch"] == 2


def test_nan_loss_before_any_checkpoint_says_none_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_byol_forward(monkeypatch, from_step=0, term=False)
    with pytest.raises(TrainingError, match=r"step 1\b.*no checkpoint was written yet"):
        collapselab.train("byol", "digits", **tiny(tmp_path))
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------- checkpoint writes


@pytest.mark.parametrize("fail_in", ["fsync", "replace"])
def test_failed_checkpoint_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           fail_in: str) -> None:
    """The second epoch's save dies mid-write (fsync of the temp file) or at the rename."""
    calls = {"n": 0}
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        # the temp file of last.pt, not the folder or the run's other files (spectra.npz)
        if stat.S_ISREG(os.fstat(fd).st_mode) and ".last.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError("disk full (simulated)")
        real_fsync(fd)

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == "last.pt":
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError("disk full (simulated)")
        real_replace(src, dst, *args, **kwargs)

    if fail_in == "fsync":
        monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    else:
        monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        collapselab.train("byol", "digits", **tiny(tmp_path))
    monkeypatch.undo()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.pt"]  # no .last.pt.*.tmp left


# --------------------------------------------------------------------------- bad resume


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed one-epoch run (copied by the tests that damage it)."""
    run = collapselab.train("byol", "digits", **tiny(tmp_path_factory.mktemp("finished"), epochs=1))
    return run.dir


def copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_resume_refuses_corrupt_checkpoint_naming_its_path(tmp_path: Path, finished_run: Path, damage: str) -> None:
    run_dir = copy_run(finished_run, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    data = last.read_bytes()
    if damage == "garbage":
        last.write_bytes(os.urandom(len(data)))
    elif damage == "truncated":
        last.write_bytes(data[: len(data) // 2])
    else:
        last.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        collapselab.train(resume=run_dir, overrides=["train.epochs=2"])
    assert str(last) in str(info.value)


def test_resume_refuses_checkpoint_with_flipped_byte(tmp_path: Path, finished_run: Path) -> None:
    """A file that still unpickles but whose tensors changed fails the SHA-256 check."""
    run_dir = copy_run(finished_run, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    weight = next(v for k, v in payload["state"]["model"].items() if v.is_floating_point())
    weight.view(-1)[0] += 1.0
    torch.save(payload, last)
    with pytest.raises(CheckpointError, match="integrity"):
        collapselab.train(resume=run_dir, overrides=["train.epochs=2"])


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path, finished_run: Path) -> None:
    run_dir = copy_run(finished_run, tmp_path / "run")
    (run_dir / "checkpoints" / "last.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no checkpoints/last\.pt to resume from"):
        collapselab.train(resume=run_dir)


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_resume_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path: Path, folder: str) -> None:
    run_dir = tmp_path / "not_a_run"
    if folder == "empty":
        run_dir.mkdir()
    with pytest.raises(InputError, match=r"no config\.yaml there"):
        collapselab.train(resume=run_dir)


def test_new_run_refuses_a_folder_that_holds_a_run(tmp_path: Path, finished_run: Path) -> None:
    copy_run(finished_run, tmp_path / "run")
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(InputError, match="already holds a run; continue it with --resume"):
        collapselab.train("byol", "digits", **tiny(tmp_path, epochs=1))
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before
