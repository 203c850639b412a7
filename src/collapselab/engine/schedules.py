"""Schedules as pure functions of the step: learning rate, EMA momentum, temperatures.

Every function takes the current step (0-based) and the total number of steps and returns a
float, so a resumed run recomputes exactly the value it would have had.
"""

from __future__ import annotations

import math

from collapselab._validation import InputError


def _check(step: int, total_steps: int, warmup_steps: int = 0) -> None:
    if total_steps < 1:
        raise InputError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise InputError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < 0:
        raise InputError(f"step must be >= 0, got {step}")


def warmup_cosine(
    step: int, total_steps: int, base_value: float, warmup_steps: int = 0, final_value: float = 0.0,
    warmup_start: float = 0.0,
) -> float:
    """Linear warm-up from ``warmup_start`` to ``base_value`` over ``warmup_steps``, then cosine
    decay to ``final_value`` at ``total_steps`` (Loshchilov & Hutter 2017; Goyal et al. 2017):

        v(s) = warmup_start + (base − warmup_start)·s/W                          for s < W
        v(s) = final + (base − final)·(1 + cos(π·(s − W)/(T − W)))/2             for W ≤ s ≤ T

    Steps past ``total_steps`` keep ``final_value``.
    """
    _check(step, total_steps, warmup_steps)
    if step < warmup_steps:
        return warmup_start + (base_value - warmup_start) * step / warmup_steps
    if total_steps == warmup_steps:
        return base_value
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return final_value + (base_value - final_value) * (1.0 + math.cos(math.pi * progress)) / 2.0


def ema_momentum(step: int, total_steps: int, base_momentum: float = 0.996, final_momentum: float = 1.0) -> float:
    """BYOL's target-network momentum τ(k) = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 (Grill et al.
    2020, §3.2), generalised to end at ``final_momentum`` (1.0 in the paper)."""
    if not 0.0 <= base_momentum <= 1.0 or not 0.0 <= final_momentum <= 1.0:
        raise InputError(f"momenta must lie in [0, 1], got {base_momentum} and {final_momentum}")
    return warmup_cosine(step, total_steps, base_value=base_momentum, final_value=final_momentum)


def linear_warmup_constant(step: int, warmup_steps: int, start_value: float, final_value: float) -> float:
    """Linear ramp from ``start_value`` to ``final_value`` over ``warmup_steps``, then constant:
    DINO's teacher temperature 0.04 → 0.07 over the first 30 epochs (Caron et al. 2021, §4)."""
    if warmup_steps < 0 or step < 0:
        raise InputError(f"step and warmup_steps must be >= 0, got {step} and {warmup_steps}")
    if warmup_steps == 0 or step >= warmup_steps:
        return final_value
    return start_value + (final_value - start_value) * step / warmup_steps
