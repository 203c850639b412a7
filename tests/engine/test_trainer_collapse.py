"""The shipped digits recipes train healthy, and turning off an anti-collapse mechanism raises a
collapse alarm that summary.json records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import collapselab

torch.set_num_threads(1)

QUIET = {"log": {"progress": False}}
NO_EVAL = {"eval": {"final": False, "knn_every": 0}}


def run(tmp_path: Path, method: str, name: str, /, evaluate: bool = False, **sections):
    settings = {**QUIET, **({} if evaluate else NO_EVAL), **sections}
    settings["run"] = {"name": name, "out_dir": str(tmp_path)}
    result = collapselab.train(method, "digits", **settings)
    summary = json.loads((result.dir / "summary.json").read_text())
    return result, summary


def collapse_alarms(summary: dict) -> list[dict]:
    return [a for a in summary["alarms"] if a["mode"] in ("complete", "dimensional")]


def test_default_byol_is_healthy_and_beats_the_untrained_backbone(tmp_path: Path) -> None:
    result, summary = run(tmp_path, "byol", "byol", evaluate=True)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 20
    assert summary["alarms"] == []
    for name in ("repr", "emb"):
        assert set(summary["diagnosis"][name]["verdict"].values()) <= {"healthy", "n/a"}, name
    ev = summary["eval"]
    assert ev["knn_top1"] > ev["baseline_random_knn_top1"]
    assert result.history and result.history[-1]["kind"] == "epoch"


def test_byol_without_predictor_collapses_and_the_alarm_is_recorded(tmp_path: Path) -> None:
    # τ = 0.9: with the recipe's τ = 0.99 the target barely moves in 100 steps and no-predictor
    # BYOL is still healthy at the end (kNN 98 %, erank 4.5); collapse needs the target to follow.
    _, summary = run(tmp_path, "byol", "byol_np", method={"predictor": "none", "ema": 0.9})
    alarms = collapse_alarms(summary)
    assert alarms, summary["alarms"]
    assert any(a["level"] == "collapsed" for a in alarms)
    assert any("predictor=none" in h for h in summary["collapse_hints"])
    assert summary["first_unhealthy"]["emb"]


@pytest.mark.slow  # about 45 s on 2 cores
def test_default_simsiam_raises_no_alarm(tmp_path: Path) -> None:
    _, summary = run(tmp_path, "simsiam", "simsiam")
    assert summary["alarms"] == []


@pytest.mark.parametrize(
    "switch",
    [pytest.param({"predictor": "none"}, marks=pytest.mark.slow), {"stop_gradient": False}],
    ids=["no_predictor", "no_stop_gradient"],
)
def test_simsiam_without_its_asymmetry_raises_a_collapse_alarm(tmp_path: Path, switch: dict) -> None:
    _, summary = run(tmp_path, "simsiam", "simsiam_ablation", method=switch)
    assert collapse_alarms(summary), summary["diagnosis"]
    assert summary["collapse_hints"]


def test_monitor_policy_stop_ends_the_run_at_the_first_collapsed_alarm(tmp_path: Path) -> None:
    _, summary = run(tmp_path, "byol", "stop", method={"predictor": "none", "ema": 0.9},
                     monitor={"policy": "stop"})
    assert summary["status"] == "stopped"
    assert summary["epochs_completed"] < 20
    assert "collapse alarm" in summary["stop_reason"]


def final_flags(summary: dict) -> dict[str, set[str]]:
    """name → the modes whose end-of-run verdict is warning or collapsed."""
    return {name: {m for m, v in modes.items() if v["level"] in ("warning", "collapsed")}
            for name, modes in summary["final_verdict"].items()}


def test_watch_it_collapse_example_ends_with_a_collapse_verdict_and_its_start(tmp_path: Path) -> None:
    """docs' example `collapselab train simsiam digits method.stop_gradient=false`: it used to raise
    warnings and then end with every verdict healthy while kNN fell below both baselines."""
    _, summary = run(tmp_path, "simsiam", "nosg", method={"stop_gradient": False})
    flags = final_flags(summary)
    assert "dimensional" in flags["emb"], summary["final_verdict"]
    final = summary["final_verdict"]["emb"]["dimensional"]
    assert final["since"] is not None and final["since"] > 0
    assert final["reason"].startswith("the embedding uses ")
    assert summary["worst_verdict"] in ("warning", "collapsed")


def test_vicreg_without_its_variance_term_is_flagged_inside_a_short_run(tmp_path: Path) -> None:
    """`vicreg digits method.variance_weight=0 train.epochs=5`: the loss falls to its collapse value
    (0 without the variance term) within the recipe's 4-epoch warm-up; it used to end with 0 alarms."""
    _, summary = run(tmp_path, "vicreg", "novar", method={"variance_weight": 0.0}, train={"epochs": 5})
    assert summary["collapse_loss"] == 0.0
    flags = final_flags(summary)
    assert any(flags.values()), summary["final_verdict"]
    assert summary["alarms"], "the warm-up delays the alarm, it does not erase it"
