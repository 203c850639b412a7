"""Training to a wall-clock budget: parse ``train.time_budget`` and plan the step count.

A budgeted run (``train.time_budget=10m``) first times a few throw-away steps, then fixes the
total number of steps ``S`` so that the training phase fits the budget, restores the state it had
before timing, and trains exactly ``S`` steps with every schedule (learning rate, EMA momentum,
temperatures, warm-up) laid out over ``S``. ``S`` is written to ``config.yaml`` as
``train.steps``: a rerun with ``train.steps=S`` is the same run, step for step.

The plan solves, for the time left ``R`` after setup and timing, a measured time per step ``t``
and a per-epoch cost ``o`` (the collapse monitor, the online kNN and the checkpoint at each
epoch's end) with ``E`` steps per epoch,

    S = max { s ≥ 1 : s·t + ⌈s/E⌉·o ≤ (1 − margin)·R },

the margin (default 3 %) absorbing the timing noise of a short measurement.
"""

from __future__ import annotations

import math

from collapselab.config import parse_duration

__all__ = ["overrun_note", "parse_duration", "plan_steps"]


def plan_steps(remaining_s: float, step_s: float, steps_per_epoch: int, epoch_overhead_s: float = 0.0,
               margin: float = 0.03) -> int:
    """The most steps ``s`` with ``s·step_s + ⌈s/steps_per_epoch⌉·epoch_overhead_s ≤
    (1 − margin)·remaining_s``; at least 1 (a budget too small for one step still trains one)."""
    if step_s <= 0 or steps_per_epoch < 1 or epoch_overhead_s < 0 or not 0 <= margin < 1:
        raise ValueError("plan_steps: step_s > 0, steps_per_epoch >= 1, overhead >= 0, 0 <= margin < 1")
    available = (1.0 - margin) * remaining_s
    if available <= step_s + epoch_overhead_s:
        return 1

    def cost(s: int) -> float:
        return s * step_s + math.ceil(s / steps_per_epoch) * epoch_overhead_s

    per_step = step_s + epoch_overhead_s / steps_per_epoch  # the average cost of a step
    s = max(1, int(available // per_step))
    while cost(s + 1) <= available:  # the last epoch may be partial: its overhead is paid in full
        s += 1
    while s > 1 and cost(s) > available:
        s -= 1
    return s


def overrun_note(budget_s: float, used_s: float, before_s: float, steps: int, planned_step_s: float,
                 tolerance: float = 0.1) -> str | None:
    """A one-line note when a budgeted run used more than ``(1 + tolerance)·budget_s``, else None.

    ``before_s``: setup and timing, spent before the first planned step. The plan is fixed once
    (so a rerun with ``train.steps`` is the same run); when setup alone outlasts the budget the
    run still trains its minimum of one step, and when the machine slows down after the timing
    the run keeps its steps and schedules and ends late. The realised time per step,
    ``(used_s − before_s) / steps``, includes the per-epoch costs, so it slightly overstates the
    step itself.
    """
    if budget_s <= 0 or steps < 1 or used_s <= (1.0 + tolerance) * budget_s:
        return None
    head = f"note: the run used {used_s:.0f} s of its {budget_s:.0f} s budget"
    if before_s >= budget_s:
        return f"{head}: setup and timing alone took {before_s:.0f} s, so it trained the minimum of {steps} step(s)"
    realised = (used_s - before_s) / steps
    return (f"{head}: training ran at {realised * 1000:.0f} ms/step (epoch costs included) where "
            f"{planned_step_s * 1000:.0f} ms/step was timed, so the machine slowed down after planning; "
            f"the {steps} planned steps were kept so the schedules end where they were laid out")
