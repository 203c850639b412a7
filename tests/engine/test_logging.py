"""RunLogger (metrics.jsonl, resume, TensorBoard, W&B), console line and progress bar."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from collapselab._validation import InputError
from collapselab.engine import logging as run_logging
from collapselab.engine.logging import RunLogger, format_epoch_line, progress_bar, read_metrics


def _straight_run(run_dir: Path, steps: range, **kwargs: Any) -> None:
    with RunLogger(run_dir, tensorboard=False, **kwargs) as logger:
        for s in steps:
            logger.log(s, {"loss": 1.0 / (s + 1), "lr": 0.1})
            if s % 3 == 2:
                logger.log(s, {"knn_top1": 0.5, "verdict": "healthy"}, kind="eval")


def test_jsonl_round_trip_with_nonfinite_values(tmp_path: Path) -> None:
    with RunLogger(tmp_path / "run", tensorboard=False) as logger:
        logger.log(0, {"loss": 0.25, "n": 3, "verdict": "healthy", "ok": True})
        logger.log(1, {"loss": math.nan, "grad": math.inf, "neg": -math.inf, "t": torch.tensor(2.5)})
        logger.log(2, {"np": np.float32(0.5), "i": np.int64(7)}, kind="eval")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is strict JSON
    assert parsed[0] == {"step": 0, "kind": "train", "loss": 0.25, "n": 3, "verdict": "healthy", "ok": True}
    assert parsed[1]["loss"] == "nan" and parsed[1]["grad"] == "inf" and parsed[1]["neg"] == "-inf"
    assert "NaN" not in lines[1] and "Infinity" not in lines[1]
    records = read_metrics(tmp_path / "run")
    assert math.isnan(records[1]["loss"]) and records[1]["grad"] == math.inf and records[1]["neg"] == -math.inf
    assert records[1]["t"] == 2.5
    assert records[2] == {"step": 2, "kind": "eval", "np": 0.5, "i": 7}


def test_each_line_is_flushed_before_close(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, tensorboard=False)
    logger.log(0, {"loss": 1.0})
    assert read_metrics(tmp_path) == [{"step": 0, "kind": "train", "loss": 1.0}]
    logger.close()
    logger.close()  # idempotent


def test_resume_truncates_and_equals_straight_run(tmp_path: Path) -> None:
    _straight_run(tmp_path / "straight", range(10))
    resumed = tmp_path / "resumed"
    _straight_run(resumed, range(10))  # the "crashed" run got to step 9 after its last checkpoint
    _straight_run(resumed, range(5, 10), resume_step=5)
    assert (resumed / "metrics.jsonl").read_bytes() == (tmp_path / "straight" / "metrics.jsonl").read_bytes()
    assert not list(resumed.glob("*.tmp"))


def test_truncated_last_line_is_dropped_on_resume_and_read(tmp_path: Path) -> None:
    _straight_run(tmp_path / "straight", range(6))
    run = tmp_path / "run"
    _straight_run(run, range(4))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "kind": "train", "lo')  # crash mid-write
    assert [r["step"] for r in read_metrics(run)] == [0, 1, 2, 2, 3]
    _straight_run(run, range(4, 6), resume_step=4)
    assert (run / "metrics.jsonl").read_bytes() == (tmp_path / "straight" / "metrics.jsonl").read_bytes()


def test_new_run_replaces_existing_file(tmp_path: Path) -> None:
    _straight_run(tmp_path, range(4))
    _straight_run(tmp_path, range(2))
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]


def test_disabled_logger_writes_and_opens_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden() -> None:
        raise AssertionError("disabled logger must not import optional backends")

    monkeypatch.setattr(run_logging, "_import_summary_writer", forbidden)
    monkeypatch.setattr(run_logging, "_import_wandb", forbidden)
    run = tmp_path / "rank1"
    with RunLogger(run, enabled=False, tensorboard=True, wandb={"project": "x"}) as logger:
        logger.log(0, {"loss": 1.0})
    assert not run.exists()


def test_tensorboard_true_but_missing_names_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ImportError("No module named 'tensorboard'")

    monkeypatch.setattr(run_logging, "_import_summary_writer", missing)
    with pytest.raises(InputError, match="pip install tensorboard"):
        RunLogger(tmp_path, tensorboard=True)
    with RunLogger(tmp_path, tensorboard="auto") as logger:  # auto: silently skipped
        logger.log(0, {"loss": 1.0})
        assert logger._tb_writer is None
    with pytest.raises(InputError, match="tensorboard must be"):
        RunLogger(tmp_path, tensorboard="yes")


class _FakeWriter:
    instances: ClassVar[list[_FakeWriter]] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = 0
        _FakeWriter.instances.append(self)

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.scalars.append((tag, value, global_step))

    def close(self) -> None:
        self.closed += 1


def test_tensorboard_scalars_numeric_only_and_purged_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _FakeWriter.instances = []
    monkeypatch.setattr(run_logging, "_import_summary_writer", lambda: _FakeWriter)
    with RunLogger(tmp_path, tensorboard=True) as logger:
        logger.log(3, {"loss": 0.5, "verdict": "healthy", "n": 2})
        logger.log(3, {"knn_top1": 0.9}, kind="eval")
    with RunLogger(tmp_path, tensorboard="auto", resume_step=2):
        pass
    first, resumed = _FakeWriter.instances
    assert first.log_dir == str(tmp_path) and first.purge_step is None and resumed.purge_step == 2
    assert first.scalars == [("train/loss", 0.5, 3), ("train/n", 2, 3), ("eval/knn_top1", 0.9, 3)]
    assert first.closed == 1


def test_fake_wandb_receives_init_log_and_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any, Any]] = []

    class FakeRun:
        def finish(self) -> None:
            calls.append(("finish", None, None))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", None, kw)) or FakeRun()  # type: ignore[attr-defined]
    fake.log = lambda data, step: calls.append(("log", data, step))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = {"method": "byol", "lr": 0.1}
    with RunLogger(tmp_path, tensorboard=False, wandb={"project": "x", "mode": "offline"}, config=cfg) as logger:
        logger.log(4, {"loss": 0.5, "verdict": "healthy"}, kind="eval")
    assert calls[0] == ("init", None, {"dir": str(tmp_path), "config": cfg, "project": "x", "mode": "offline"})
    assert calls[1] == ("log", {"eval/loss": 0.5, "eval/verdict": "healthy"}, 4)
    assert calls[2][0] == "finish" and len(calls) == 3


def test_wandb_missing_names_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(InputError, match="pip install wandb"):
        RunLogger(tmp_path, tensorboard=False, wandb={"project": "x"})


def test_log_rejects_bad_input(tmp_path: Path) -> None:
    with RunLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(InputError, match="reserved"):
            logger.log(0, {"step": 1})
        with pytest.raises(InputError, match="'emb'"):
            logger.log(0, {"emb": torch.zeros(3)})
        with pytest.raises(InputError, match="step must be"):
            logger.log(-1, {"loss": 1.0})
    with pytest.raises(InputError, match="closed"):
        logger.log(1, {"loss": 1.0})


def test_format_epoch_line_full_and_partial() -> None:
    metrics = {
        "loss": 0.12344, "knn_top1": 0.912, "stable_rank": 12.34, "effective_rank": 20.06,
        "verdict": "healthy", "img_per_s": 412.3, "epoch_time_s": 5.08, "lr": 0.3,
    }
    assert format_epoch_line(3, 20, metrics) == (
        "epoch  3/20  loss 0.1234  knn 91.2%  srank 12.3  erank 20.1  verdict healthy  412 img/s  5.1 s"
    )
    assert format_epoch_line(10, 100, {"loss": 2.5}) == "epoch  10/100  loss 2.5000"
    assert format_epoch_line(1, 1, {}) == "epoch 1/1"
    verdicts = {"complete": "healthy", "dimensional": "collapsed", "cluster": "n/a"}
    assert format_epoch_line(1, 1, {"verdict": verdicts}) == "epoch 1/1  verdict dimensional=collapsed"


def test_progress_bar_settings() -> None:
    hidden = progress_bar(10, desc="epoch 1", enabled=False)
    assert hidden.disable
    hidden.update(1)
    hidden.set_postfix(loss=0.5, img_s=100)
    hidden.close()
    with progress_bar(10, desc="epoch 1", enabled=True) as bar:  # writes to (captured) stderr
        assert not bar.disable and bar.total == 10 and bar.unit == "step"
        assert not bar.leave and bar.dynamic_ncols and bar.desc.startswith("epoch 1")
        bar.update(1)
        bar.set_postfix(loss=0.5, img_s=100)
