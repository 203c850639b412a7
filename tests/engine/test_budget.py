"""``train.steps`` and ``train.time_budget``: durations parse, the step plan is the largest that
fits (checked against a naive search), and a budgeted run equals the run repeated with the step
count it recorded, for methods with an EMA target, a queue, buffers and a plain one."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

import collapselab
from collapselab._validation import InputError
from collapselab.config import load_config, parse_duration
from collapselab.engine.budget import overrun_note, plan_steps
from collapselab.engine.fastpath import compile_decision
from collapselab.engine.trainer import Trainer

torch.set_num_threads(1)


def tiny(out_dir: Path, name: str, **train: Any) -> dict[str, Any]:
    """A few-second digits run: width-8 CNN, 5 steps per epoch (batch 256 of 1,438 images)."""
    return {
        "run": {"name": name, "out_dir": str(out_dir)},
        "train": {"threads": 1, "adapt_threads": False, "device": "cpu", **train},
        "model": {"backbone_args": {"width": 8}},
        "log": {"progress": False, "tensorboard": False, "every": 1},
        "eval": {"final": False},
        "monitor": {"probe_size": 64},
    }


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), ("1h30m", 5400.0), ("2.5m", 150.0),
    ("120", 120.0), (45, 45.0), (0.5, 0.5), (" 1m 30s ", 90.0),
])
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["abc", "0s", "-5", "", "1h1h", "10 minutes", True, float("inf")])
def test_bad_durations_are_one_line_errors(bad: Any) -> None:
    # every one names the key; inf is caught by the finiteness check before the duration parser
    with pytest.raises(InputError, match=r"train\.time_budget(=| must be a finite number)") as err:
        load_config("byol", "digits", train={"time_budget": bad})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_step_counts_are_errors(bad: Any) -> None:
    with pytest.raises(InputError, match=r"train\.steps"):
        load_config("byol", "digits", train={"steps": bad})


# --------------------------------------------------------------------------- the plan


def naive_plan(remaining: float, step: float, per_epoch: int, overhead: float, margin: float) -> int:
    """The largest s whose time (each started epoch pays its overhead) fits, by trying every s."""
    best, s = 1, 1
    while True:
        if s * step + math.ceil(s / per_epoch) * overhead <= (1 - margin) * remaining:
            best = s
        elif s > per_epoch and s * step > remaining:
            return best
        s += 1


def test_plan_is_the_largest_step_count_that_fits() -> None:
    rng = random.Random(0)
    for _ in range(300):
        remaining = rng.uniform(0.1, 200.0)
        step = rng.uniform(0.005, 0.5)
        per_epoch = rng.randint(1, 60)
        overhead = rng.choice([0.0, rng.uniform(0.0, 3.0)])
        margin = rng.choice([0.0, 0.03, 0.2])
        assert plan_steps(remaining, step, per_epoch, overhead, margin) == naive_plan(
            remaining, step, per_epoch, overhead, margin)


def test_plan_closed_forms() -> None:
    assert plan_steps(100.0, 1.0, 10, 0.0, margin=0.0) == 100
    # 10 steps + 1 s per epoch: 11 s per full epoch; 100 s hold 9 epochs (99 s), no 100th step
    assert plan_steps(100.0, 1.0, 10, 1.0, margin=0.0) == 90
    assert plan_steps(0.01, 1.0, 10, 0.0) == 1  # too small for one step: still one


def test_compile_auto_for_a_budget_still_to_plan() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_decision("auto", cuda, None, 120.0)[0] is False
    assert compile_decision("auto", cuda, None, 3600.0)[0] is True
    assert compile_decision("auto", cpu, None, 3600.0)[0] is False


# --------------------------------------------------------------------------- runs


def test_steps_end_the_run_mid_epoch_with_the_schedule_finished(tmp_path: Path) -> None:
    run = collapselab.train("byol", "digits", optim={"warmup_epochs": 0.4},
                            **tiny(tmp_path, "steps", steps=7, epochs=100))
    assert run.summary["steps"] == 7 and run.summary["total_steps"] == 7
    assert run.summary["epochs"] == run.summary["epochs_completed"] == 2  # 5 + 2 steps
    rows = [r for r in run.history if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, 8))
    # 2 warm-up steps, then cosine over the remaining 5: lr at step index 6 is base·(1+cos(4π/5))/2
    peak = max(r["lr"] for r in rows)
    assert rows[-1]["lr"] == pytest.approx(peak * (1 + math.cos(math.pi * 4 / 5)) / 2)


@pytest.mark.parametrize("method", ["byol", "moco", "directpred", "simclr"])
def test_a_budgeted_run_equals_the_rerun_with_its_recorded_steps(tmp_path: Path, method: str) -> None:
    budgeted = collapselab.train(method, "digits", **tiny(tmp_path, "budget", time_budget="3s"))
    plan = budgeted.summary["budget"]
    steps = plan["steps"]
    assert budgeted.summary["steps"] == steps >= 1
    assert plan["epochs"] == math.ceil(steps / plan["steps_per_epoch"]) == budgeted.summary["epochs"]
    assert plan["time_budget_s"] == 3.0 and plan["step_s"] > 0 and plan["measured_steps"] >= 3
    assert plan["time_used_s"] > 0
    saved = OmegaConf.load(budgeted.dir / "config.yaml")
    assert saved.train.steps == steps and saved.train.time_budget == "3s"

    rerun = collapselab.train(method, "digits", **tiny(tmp_path, "rerun", steps=steps))
    assert rerun.summary["budget"] is None
    a, b = budgeted.method.state_dict(), rerun.method.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = lambda run: [r["loss"] for r in run.history if r["kind"] == "train"]  # noqa: E731
    assert losses(budgeted) == losses(rerun)


def test_rerun_from_the_saved_config_repeats_the_run(tmp_path: Path) -> None:
    first = collapselab.train("simsiam", "digits", **tiny(tmp_path, "first", time_budget=2))
    again = collapselab.train(config=first.dir / "config.yaml", run={"name": "again", "out_dir": str(tmp_path)})
    assert again.summary["budget"] is None  # train.steps is set: nothing to plan
    assert again.summary["steps"] == first.summary["steps"]
    a, b = first.method.state_dict(), again.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_overrun_note_only_past_the_tolerance() -> None:
    """Silent up to (1 + tolerance)·budget; past it the note names the cause: setup longer than
    the budget, or training slower than timed ((used − before) / steps against the plan)."""
    assert overrun_note(120.0, 131.9, 5.0, 800, 0.12) is None
    assert overrun_note(120.0, 100.0, 5.0, 800, 0.12) is None
    note = overrun_note(120.0, 149.0, 9.0, 1000, 0.106)
    assert note is not None and "149 s of its 120 s budget" in note
    assert "140 ms/step" in note and "106 ms/step was timed" in note and "1000 planned steps" in note
    setup = overrun_note(2.0, 9.0, 8.8, 1, 0.1)
    assert setup is not None and "setup and timing alone took 9 s" in setup and "minimum of 1 step" in setup
    assert overrun_note(120.0, 125.0, 5.0, 800, 0.12, tolerance=0.0) is not None


def test_a_run_that_slows_after_planning_keeps_its_steps_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once the plan is fixed every step sleeps twice its timed length (a machine three times
    slower): the run still trains the planned steps and, having run far past the budget, prints
    the overrun note."""
    original_plan, original_step = Trainer._plan_budget, Trainer._step
    extra = {"s": 0.0}

    def plan_then_slow(self: Trainer) -> None:
        original_plan(self)
        extra["s"] = 2 * self.budget["step_s"]

    def step(self: Trainer, images: torch.Tensor) -> None:
        original_step(self, images)
        time.sleep(extra["s"])

    monkeypatch.setattr(Trainer, "_plan_budget", plan_then_slow)
    monkeypatch.setattr(Trainer, "_step", step)
    run = collapselab.train("simclr", "digits", **tiny(tmp_path, "slow", time_budget="4s"))
    plan = run.summary["budget"]
    assert run.summary["steps"] == plan["steps"]
    before = plan["setup_s"] + plan["planning_s"]
    assert plan["time_used_s"] >= before + plan["steps"] * 2 * plan["step_s"]  # the sleeps alone
    if before < 2.0:  # ≥ 0.97·2 s of planned training, three times as long: ≥ 5.8 s > 1.1·4 s
        assert plan["time_used_s"] > 4.4
        assert "of its 4 s budget" in capsys.readouterr().out
