"""benchmarks/collapse_zoo.py: its outcome labels, the fixed split and the scoring, on records
made here (synthetic cases need no training; trained records are built by hand)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "collapse_zoo.py"
_spec = importlib.util.spec_from_file_location("collapse_zoo", SCRIPT)
zoo = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("collapse_zoo", zoo)  # its dataclasses look their module up
_spec.loader.exec_module(zoo)


def _trained(top1: float, losses: list[list[float]], collapse: float | None = None, **extra) -> dict:
    record = {"kind": "train", "eval": {"knn_top1": top1, "baseline_pixels": 96.9, "baseline_random": 95.8},
              "losses": losses, "collapse_loss": collapse, "knn": []}
    record.update(extra)
    return record


def test_outcome_labels_follow_knn_loss_and_code_usage_not_the_monitor() -> None:
    assert not zoo.label(_trained(95.0, [[5, 1.0], [10, 0.5]], 0.0))["collapsed"]  # within the 1-point margin
    below = zoo.label(_trained(94.7, [[5, 1.0], [10, 0.5]], 0.0))
    assert below["collapsed"] and set(below["modes"]) == {"complete", "dimensional"}
    at_value = zoo.label(_trained(97.0, [[5, 5.0], [10, 0.04]], 0.0))  # 0.8 % of the way left
    assert at_value["collapsed"] and "collapse value" in at_value["why"]
    assert not zoo.label(_trained(97.0, [[5, 5.0], [10, 0.06]], 0.0))["collapsed"]
    codes = zoo.label(_trained(97.0, [], None, heldout_code_used_fraction=0.7))
    assert codes["collapsed"] and codes["modes"] == ["cluster"]


def test_the_split_alternates_within_each_group_by_name() -> None:
    halves = zoo.split(zoo.CASES)
    assert len(zoo.CASES) >= 40 and len(halves) == len(zoo.CASES)
    for group in {c.group for c in zoo.CASES}:
        names = sorted(c.name for c in zoo.CASES if c.group == group)
        assert [halves[n] for n in names] == ["calibrate" if i % 2 == 0 else "held-out" for i in range(len(names))]


def test_the_knn_fall_is_the_last_stretch_below_the_floor_after_being_above_it() -> None:
    record = _trained(80.0, [], knn=[[5, 96.0], [10, 93.0], [15, 96.0], [20, 90.0], [25, 85.0]])
    assert zoo.first_knn_drop(record) == 20
    always_below = _trained(80.0, [], knn=[[5, 93.0], [10, 90.0]])
    assert zoo.first_knn_drop(always_below) is None and zoo.below_from_start(always_below)


@pytest.mark.parametrize("construction", ["point", "rank_shrink", "codes_partial", "stationary", "growing_scale"])
def test_synthetic_cases_run_and_are_scored(construction: str) -> None:
    torch.set_num_threads(1)
    case = next(c for c in zoo.CASES if c.name == f"synthetic/{construction}")
    record = zoo.run_synthetic_case(case)
    record.update(name=case.name, kind=case.kind, group=case.group, construction=construction)
    row = next(r for r in zoo.score([record]) if r["name"] == case.name)
    if row["collapsed"]:
        assert row["caught"], row
    else:
        assert row["false_alarm"] is False, row


def test_floor_se_is_the_paired_standard_error_against_the_lower_floor() -> None:
    hits = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    pixels = torch.tensor([1, 0, 1, 0, 1, 1, 0, 1], dtype=torch.bool)  # 5/8
    random = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1], dtype=torch.bool)  # 7/8: pixels is the floor
    got = zoo.floor_se(hits, pixels, random)
    d = [100.0 * (a - b) for a, b in zip(hits.tolist(), pixels.tolist(), strict=True)]  # 0 100 0 0 0 -100 100 0
    mean = sum(d) / len(d)
    sd = (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5
    assert got["queries"] == 8
    assert got["floor_diff"] == pytest.approx(12.5) and got["floor_se"] == pytest.approx(sd / 8 ** 0.5)
    assert zoo.floor_se(hits, random, pixels)["floor_diff"] == pytest.approx(12.5)  # the lower one, either order


def test_a_knn_label_within_two_standard_errors_of_the_floor_is_undetermined() -> None:
    def with_se(top1: float, losses: list[list[float]] | None = None) -> dict:
        record = _trained(top1, losses or [], 0.0 if losses else None)
        record["eval"]["floor_se"] = 1.0  # the floor is the untrained network's 95.8
        return record

    near = zoo.label(with_se(94.5))  # 1.3 below: collapsed by the 1-point rule, within 2 errors
    assert near["collapsed"] and not near["determined"] and "undetermined" in near["why"]
    assert zoo.label(with_se(97.0))["determined"] is False  # 1.2 above, healthy, also within 2
    far = zoo.label(with_se(93.0))
    assert far["collapsed"] and far["determined"]
    at_value = zoo.label(with_se(95.5, [[5, 5.0], [10, 0.01]]))  # the loss decides, whatever the kNN's error
    assert at_value["collapsed"] and at_value["determined"]
    assert zoo.label(_trained(94.5, []))["determined"]  # records without the error: the pre-set rule
