"""Schedules against their closed forms and boundary values."""

from __future__ import annotations

import itertools
import math

import pytest

from collapselab._validation import InputError
from collapselab.engine.schedules import ema_momentum, linear_warmup_constant, warmup_cosine


def test_warmup_cosine_boundaries_and_midpoint() -> None:
    kwargs = {"total_steps": 110, "base_value": 1.0, "warmup_steps": 10, "final_value": 0.1}
    assert warmup_cosine(0, **kwargs) == 0.0
    assert warmup_cosine(5, **kwargs) == pytest.approx(0.5)
    assert warmup_cosine(10, **kwargs) == pytest.approx(1.0)
    assert warmup_cosine(60, **kwargs) == pytest.approx(0.55)  # cosine midpoint: (1 + 0.1)/2
    assert warmup_cosine(110, **kwargs) == pytest.approx(0.1)
    assert warmup_cosine(500, **kwargs) == pytest.approx(0.1)


def test_warmup_cosine_matches_formula_everywhere() -> None:
    total, warm, base, final = 50, 7, 0.3, 0.01
    for s in range(total + 1):
        if s < warm:
            expected = base * s / warm
        else:
            expected = final + (base - final) * (1 + math.cos(math.pi * (s - warm) / (total - warm))) / 2
        assert warmup_cosine(s, total, base, warm, final) == pytest.approx(expected, abs=1e-15)


def test_warmup_cosine_is_monotone_after_warmup() -> None:
    values = [warmup_cosine(s, 100, 1.0, 10) for s in range(10, 101)]
    assert all(b <= a for a, b in itertools.pairwise(values))


def test_byol_momentum_schedule() -> None:
    total = 1000
    assert ema_momentum(0, total) == pytest.approx(0.996)
    assert ema_momentum(total, total) == pytest.approx(1.0)
    k = 250
    assert ema_momentum(k, total) == pytest.approx(1 - (1 - 0.996) * (math.cos(math.pi * k / total) + 1) / 2)


def test_dino_teacher_temperature_warmup() -> None:
    assert linear_warmup_constant(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup_constant(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup_constant(30, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup_constant(99, 30, 0.04, 0.07) == pytest.approx(0.07)


def test_bad_schedule_arguments_are_rejected() -> None:
    with pytest.raises(InputError, match="total_steps"):
        warmup_cosine(0, 0, 1.0)
    with pytest.raises(InputError, match="warmup_steps"):
        warmup_cosine(0, 10, 1.0, warmup_steps=20)
    with pytest.raises(InputError, match="step"):
        warmup_cosine(-1, 10, 1.0)
    with pytest.raises(InputError, match="momenta"):
        ema_momentum(0, 10, base_momentum=1.5)
