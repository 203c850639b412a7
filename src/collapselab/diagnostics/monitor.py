"""``CollapseMonitor``: diagnostics during training, a history per metric, and alarms.

The monitor only reads the tensors it is handed (design.md: data travels forward only). The
trainer calls :meth:`CollapseMonitor.update` every ``every`` steps with named embeddings
(e.g. ``{"repr": backbone_features, "emb": projector_output}``) of a fixed probe batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from collapselab._validation import ArrayLike, InputError
from collapselab.diagnostics.band import BAND_COLLAPSED_RATIO, band_score, checks_to_floor
from collapselab.diagnostics.verdict import (
    LEVELS,
    MODES,
    NOT_APPLICABLE,
    Diagnosis,
    check_pairwise_samples,
    diagnose,
    judge,
    worst_level,
)

TREND_METRICS = {"dimensional": "effective_rank", "complete": "total_variance"}
"""Metrics whose steady fall raises a warning before their level crosses a threshold."""
LOSS_AT_COLLAPSE = 0.01
"""The loss is "at its collapse value" L* when |L − L*| ≤ 1 % of |L₀ − L*|, L₀ the first loss the
monitor saw: it has covered 99 % of the way to the value a collapsed network scores. (The zoo's
first version used 5 %; healthy BYOL without a predictor but with its EMA target, and SimSiam in
a plain loop, came within 2.6-2.9 % while their kNN stayed above the baselines: for BYOL and
SimSiam the collapse value is also the loss's minimum.)"""
WARMUP_RELEASE = 0.1
"""The warm-up ends early at the first check where the loss has covered 90 % of the way to its
collapse value (|L − L*| ≤ 10 % of |L₀ − L*|): the early reorganisation the warm-up waits out
does not take the loss there (the healthy runs of the collapse zoo's calibration half stayed at
least 26 % of the way away for their whole run), so what the geometry shows from then on is
reported at once. BYOL without predictor and EMA on digits got there at its second check."""
LOSS_NEAR_COLLAPSE = 0.25
"""With :data:`SPREAD_HALVED`: the loss has covered 75 % of the way to its collapse value. Healthy
runs of the collapse zoo (three replicates) kept at least 25 % of the way left, except
known-collapse switches (BYOL without a predictor, SimSiam without stop-gradient or predictor)."""
SPREAD_HALVED = 0.5
"""A complete-collapse warning when the spread is under half of its start while the loss is near
its collapse value (:data:`LOSS_NEAR_COLLAPSE`): the points draw into a cone as the loss heads to
the value a collapsed network scores. Networks at initialisation already map inputs into a narrow
cone, and training that works widens it (healthy zoo runs kept at least 0.69× their start);
SimSiam without stop-gradient whose projector regains its rank ends at 0.18-0.30× with its
negative-cosine loss 84 % of the way to −1, and no other rule sees it."""
PEAK_FALL = 0.15
"""Effective rank below 15 % of its peak over the run (and below where it started): the whole-run
trend, which a steady-fall window misses when the fall is fast or noisy."""
BACKBONE = "repr"
"""The name the trainer gives the backbone's representation, the embedding that is evaluated and
kept; the other names (``emb``: the projector's output) are heads on top of it."""
RECOVERY_CHECKS = 3
"""A mode's final verdict is the worst of its last 3 checks: one healthy check between warnings
is not a recovery (SimSiam without stop-gradient on digits alternates)."""


@dataclass(frozen=True)
class Alarm:
    """A collapse mode of one named embedding got worse at ``step``."""

    step: int
    name: str
    mode: str
    level: str
    previous: str
    reason: str
    first_unhealthy_step: int

    def __str__(self) -> str:
        return (
            f"step {self.step}: {self.mode} collapse {self.level.upper()} in '{self.name}' "
            f"(was {self.previous}; first left healthy at step {self.first_unhealthy_step}): {self.reason}"
        )


def loss_distance_left(losses: list[tuple[int, float]], target: float) -> float:
    """|L − L*| / |L₀ − L*|: the part of the first loss's distance to ``target`` (the loss at
    complete collapse) that the last loss has left; inf with fewer than 2 losses or L₀ = L*."""
    if len(losses) < 2:
        return math.inf
    start = abs(losses[0][1] - target)
    return abs(losses[-1][1] - target) / start if start > 1e-12 else math.inf


def loss_at_collapse(losses: list[tuple[int, float]], target: float, fraction: float = LOSS_AT_COLLAPSE) -> bool:
    """True if the last loss has covered all but ``fraction`` of the distance from the first loss
    to ``target`` (the loss at complete collapse)."""
    return loss_distance_left(losses, target) <= fraction


def falling_trend(values: list[float], window: int, drop: float) -> bool:
    """True if each of the last ``window`` values is below the one before it and the last is more
    than ``drop`` (a fraction) below the value ``window`` checks earlier."""
    if len(values) < window + 1:
        return False
    recent = values[-(window + 1) :]
    if not all(math.isfinite(v) for v in recent):
        return False
    steady = all(b < a for a, b in itertools.pairwise(recent))
    return steady and recent[-1] < (1.0 - drop) * recent[0]


def _check_step(step: Any, where: str) -> int:
    """``step`` as an int, or a one-line :class:`InputError` (a step counts training steps)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        if isinstance(step, torch.Tensor) and step.numel() == 1 and not step.is_floating_point():
            return int(step)
        raise InputError(f"{where}: step must be an integer (the training step), got {step!r}")
    return int(step)


class CollapseMonitor:
    """Diagnose named embeddings during training, keep their history and raise alarms.

    Args:
        every: ``should_run(step)`` is true every ``every`` steps (the trainer asks it).
        use_reference: judge each name relative to its first observation (normally the network at
            initialisation): dimensional and complete verdicts then follow the effective rank and
            tr Σ relative to where they started, which is what the data and architecture allow.
        trend_window, trend_drop: a steady fall of ``effective_rank`` or ``total_variance`` over
            ``trend_window`` checks by more than ``trend_drop`` (fraction) to below the reference
            value raises a warning even while the level is still above the thresholds (a fall
            from an early overshoot back above the reference does not: healthy SimSiam on digits
            climbs from effective rank 28 to 63, then settles at 24).
        warmup_steps: verdicts at steps below this are recorded in ``levels`` and ``history``
            but raise no alarm and do not count as first unhealthy. Early training can dip
            transiently: healthy VICReg on digits drops its embedding's effective rank from 19 to
            2.6 at step 20 and recovers (docs/diagnostics.md). The warm-up ends early when the
            loss has covered 90 % of the way to ``collapse_loss`` (:data:`WARMUP_RELEASE`;
            ``warmup_ended`` records the step).
        max_pairwise_samples: passed to :func:`diagnose` (uniformity subsample).
        collapse_loss: the training loss at complete collapse (``SSLMethod.collapse_loss``); with
            the losses passed to :meth:`update`, a loss that has reached it is a complete-collapse
            warning (:func:`loss_at_collapse`).
        recovery_checks: the final verdict of a mode is the worst of its last this many checks
            (after the warm-up): a run that warned and did not stay healthy that long has not
            recovered.
        backbone: the name of the backbone's representation (:data:`BACKBONE`). When it is
            watched, a head's dimensional warning at a check where the backbone is healthy says
            so (:meth:`_head_only`); the level is the head's own.

    ``history[name][metric]`` lists values aligned with ``steps[name]``; ``levels[name][mode]``
    the verdicts; ``first_unhealthy[name][mode]`` the step at which a mode first left "healthy";
    ``alarms`` every alarm raised, in order.
    """

    def __init__(
        self,
        *,
        every: int = 1,
        use_reference: bool = True,
        trend_window: int = 5,
        trend_drop: float = 0.5,
        warmup_steps: int = 0,
        max_pairwise_samples: int = 1024,
        collapse_loss: float | None = None,
        recovery_checks: int = RECOVERY_CHECKS,
        backbone: str | None = BACKBONE,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise InputError(f"CollapseMonitor: every must be an integer >= 1, got {every!r}")
        check_pairwise_samples(max_pairwise_samples, "CollapseMonitor: max_pairwise_samples")
        if trend_window < 2 or not 0.0 < trend_drop < 1.0:
            raise InputError("CollapseMonitor: need trend_window >= 2 and 0 < trend_drop < 1")
        self.every = every
        self.use_reference = use_reference
        self.trend_window = trend_window
        self.trend_drop = trend_drop
        self.warmup_steps = warmup_steps
        self.warmup_ended: int | None = None
        self.max_pairwise_samples = max_pairwise_samples
        self.collapse_loss = collapse_loss
        self.recovery_checks = max(int(recovery_checks), 1)
        self.backbone = backbone
        self.losses: list[tuple[int, float]] = []
        self.steps: dict[str, list[int]] = {}
        self.history: dict[str, dict[str, list[float]]] = {}
        self.levels: dict[str, dict[str, list[str]]] = {}
        self.verdict_history: dict[str, dict[str, list[str]]] = {}
        self.references: dict[str, dict[str, float]] = {}
        self.first_unhealthy: dict[str, dict[str, int]] = {}
        self.latest: dict[str, Diagnosis] = {}
        self.alarms: list[Alarm] = []

    def should_run(self, step: int) -> bool:
        return step % self.every == 0

    @property
    def warm_until(self) -> int:
        """The first step whose verdicts raise alarms: ``warmup_steps``, or earlier where the
        loss ended the warm-up (:data:`WARMUP_RELEASE`)."""
        return self.warmup_steps if self.warmup_ended is None else min(self.warmup_steps, self.warmup_ended)

    def update(
        self,
        step: int,
        embeddings: Mapping[str, ArrayLike],
        *,
        views: Mapping[str, ArrayLike] | None = None,
        codes: ArrayLike | None = None,
        labels: ArrayLike | None = None,
        loss: float | None = None,
        bands: Mapping[str, ArrayLike] | None = None,
    ) -> list[Alarm]:
        """Diagnose each named embedding at ``step``; return the alarms this update raised.

        ``views`` maps a name to a second view of the same inputs; ``codes`` and ``labels`` apply
        to every name; ``loss`` is the training loss around ``step`` (e.g. the mean since the last
        check); ``bands`` maps a name to the uncertainty band of its rows (the ``band`` mode,
        e.g. ``{"emb": sigma}``). Steps must increase.
        """
        if not isinstance(embeddings, Mapping):
            raise InputError(
                f"CollapseMonitor.update: embeddings must be a mapping of name → embeddings, like "
                f'{{"emb": z}}; got {type(embeddings).__name__}'
            )
        if not embeddings:
            raise InputError("CollapseMonitor.update: no embeddings given")
        step = _check_step(step, "CollapseMonitor.update")
        for option, given in (("views", views), ("bands", bands)):
            if given is not None and not isinstance(given, Mapping):
                raise InputError(f"CollapseMonitor.update: {option} must be a mapping of name → array, "
                                 f"like {{\"emb\": ...}}; got {type(given).__name__}")
        diagnoses = {}
        for name, z in embeddings.items():
            seen = self.steps.get(name, [])
            if seen and step <= seen[-1]:
                raise InputError(
                    f"CollapseMonitor.update: step {step} for '{name}' is not after {seen[-1]}"
                )
            diagnoses[name] = diagnose(
                z,
                views=None if views is None else views.get(name),
                codes=codes,
                labels=labels,
                reference=self._reference(name),
                band=None if bands is None else bands.get(name),
                max_pairwise_samples=self.max_pairwise_samples,
            )
        return self.observe(step, diagnoses, loss=loss)

    def _reference(self, name: str) -> Diagnosis | None:
        """The first observation of ``name`` as a reference (its metrics were measured here, or
        restored from a saved state, so they are not checked as a user's mapping would be)."""
        ref = self.references.get(name) if self.use_reference else None
        return None if ref is None else Diagnosis(metrics=dict(ref), verdict={})

    def observe(self, step: int, diagnoses: Mapping[str, Diagnosis], *, loss: float | None = None) -> list[Alarm]:
        """Record already-made diagnoses (one per name) at ``step`` and apply the history rules;
        :meth:`update` is :func:`diagnose` followed by this, :func:`replay` feeds recorded ones."""
        step = _check_step(step, "CollapseMonitor.observe")
        if loss is not None and math.isfinite(float(loss)):
            self.losses.append((int(step), float(loss)))
            if (self.warmup_ended is None and step < self.warmup_steps and self.collapse_loss is not None
                    and loss_distance_left(self.losses, self.collapse_loss) <= WARMUP_RELEASE):
                self.warmup_ended = int(step)
        new: list[Alarm] = []
        # the backbone first: a head's dimensional verdict reads the backbone's at the same step
        for name, diag in sorted(diagnoses.items(), key=lambda item: item[0] != self.backbone):
            if self.use_reference and name not in self.references:
                self.references[name] = dict(diag.metrics)
            self._record(step, name, diag)
            new.extend(self._check(step, name, diag))
        self.alarms.extend(new)
        return new

    def _record(self, step: int, name: str, diag: Diagnosis) -> None:
        self.steps.setdefault(name, []).append(step)
        hist = self.history.setdefault(name, {})
        count = len(self.steps[name])
        for key, value in diag.metrics.items():
            # a metric that appears late (e.g. codes) is padded with NaN for earlier steps
            hist.setdefault(key, [math.nan] * (count - 1)).append(value)
        for values in hist.values():
            if len(values) < count:
                values.append(math.nan)

    def _check(self, step: int, name: str, diag: Diagnosis) -> list[Alarm]:
        levels = self.levels.setdefault(name, {})
        for mode in MODES:  # a state saved before a mode existed: n/a at its earlier checks
            levels.setdefault(mode, [NOT_APPLICABLE] * (len(self.steps[name]) - 1))
        firsts = self.first_unhealthy.setdefault(name, {})
        alarms = []
        for mode in MODES:
            level, reason = diag.verdict.get(mode, NOT_APPLICABLE), diag.reasons.get(mode, "")
            metric = TREND_METRICS.get(mode)
            if level == "healthy" and metric is not None:
                values = self.history[name][metric]
                start = self.references.get(name, {}).get(metric, math.inf)
                # a fall back towards the starting level (after an early overshoot) is not a collapse trend
                if falling_trend(values, self.trend_window, self.trend_drop) and values[-1] < start:
                    level = "warning"
                    what = "effective rank" if metric == "effective_rank" else "total variance"
                    reason = (
                        f"the {what} fell at each of the last {self.trend_window} checks, "
                        f"from {values[-self.trend_window - 1]:.4g} to {values[-1]:.4g}"
                    )
                    diag.verdict[mode], diag.reasons[mode] = level, reason
            if mode == "dimensional" and level == "healthy":
                values = [v for v in self.history[name]["effective_rank"] if math.isfinite(v)]
                start = self.references.get(name, {}).get("effective_rank", math.inf)
                peak = max(values, default=math.nan)
                if values and values[-1] < PEAK_FALL * peak and values[-1] < start:
                    level = "warning"
                    reason = (f"{reason}; that is {values[-1] / peak:.2f}× the most it used during the run "
                              f"({peak:.1f})")
                    diag.verdict[mode], diag.reasons[mode] = level, reason
            if mode == "dimensional" and level in ("warning", "collapsed") and self._head_only(step, name):
                backbone = self.latest[self.backbone].metrics
                reason = (f"{reason}; so far only in this head: the backbone ('{self.backbone}') is healthy, using "
                          f"{backbone['effective_rank']:.1f} of {int(backbone['available_dims'])} directions")
                diag.reasons[mode] = reason
            if mode == "band" and level != NOT_APPLICABLE:
                level, reason = self._band_history(step, name, diag, level, reason)
                diag.verdict[mode], diag.reasons[mode] = level, reason
            if mode == "complete" and level == "healthy" and self._drawing_together(step, diag):
                level = "warning"
                reason = (f"{reason}; the loss {self.losses[-1][1]:.4g} has gone "
                          f"{1 - loss_distance_left(self.losses, self.collapse_loss):.0%} of the way to the value a "
                          f"collapsed network scores ({self.collapse_loss:.4g})")
                diag.verdict[mode], diag.reasons[mode] = level, reason
            if mode == "complete" and self.collapse_loss is not None and self.losses and self.losses[-1][0] == step \
                    and loss_at_collapse(self.losses, self.collapse_loss):
                level = worst_level((level, "warning"))
                reason = (f"{reason}; the loss {self.losses[-1][1]:.4g} has reached the value a collapsed network "
                          f"scores ({self.collapse_loss:.4g}; it started at {self.losses[0][1]:.4g})")
                diag.verdict[mode], diag.reasons[mode] = level, reason
            steps = self.steps[name]
            previous = next(
                (
                    lv
                    for lv, at in zip(reversed(levels[mode]), reversed(steps[:-1]), strict=False)
                    if lv != NOT_APPLICABLE and at >= self.warm_until
                ),
                "healthy",
            )
            levels[mode].append(level)
            self.verdict_history.setdefault(name, {}).setdefault(mode, []).append(reason)
            if level in ("warning", "collapsed") and step >= self.warm_until:
                firsts.setdefault(mode, step)
                if LEVELS.index(level) > LEVELS.index(previous):
                    alarms.append(Alarm(step, name, mode, level, previous, reason, firsts[mode]))
        self.latest[name] = diag
        return alarms

    def _head_only(self, step: int, name: str) -> bool:
        """``name`` is a head (not the backbone) and the backbone, diagnosed at this ``step``, is
        healthy in the complete and dimensional modes: what the head shows has not reached the
        representation (yet). A projector can concentrate its output while the representation
        under it stays intact (Jing et al., ICLR 2022; Bordes et al., "Guillotine regularization",
        TMLR 2023), or be the first to show a collapse the backbone follows (SimSiam without a
        predictor, Chen & He 2021): the sentence says which embedding it is, the level stays."""
        backbone = self.backbone
        if backbone is None or name == backbone or self.steps.get(backbone, [None])[-1] != step:
            return False
        return all(self.levels[backbone][mode][-1] == "healthy" for mode in ("complete", "dimensional"))

    def _drawing_together(self, step: int, diag: Diagnosis) -> bool:
        """The spread fell under :data:`SPREAD_HALVED` of its start while the loss at this check
        has covered all but :data:`LOSS_NEAR_COLLAPSE` of the way to its collapse value."""
        vs_ref = diag.metrics.get("spread_vs_reference", math.nan)
        return (self.collapse_loss is not None and bool(self.losses) and self.losses[-1][0] == step
                and vs_ref < SPREAD_HALVED and loss_distance_left(self.losses, self.collapse_loss) <= LOSS_NEAR_COLLAPSE)

    def _band_history(self, step: int, name: str, diag: Diagnosis, level: str, reason: str) -> tuple[str, str]:
        """The band mode's history rules: a band whose score (:func:`band_score`: its width against
        the spread, or against its start, whichever is smaller) is below 1 and falls at each check
        so that it reaches the collapse line within one trend window at that rate is a warning; an
        unhealthy band while the training loss is finite is said to be silent (the loss does not
        show it: a Gaussian likelihood only drifts down like log σ)."""
        history = self.history[name]
        count = len(self.steps[name])
        # the reference check is its own reference: its width is 1× its start
        vs_refs = list(history.get("band_width_vs_reference", [math.nan] * count))
        if self.use_reference and "band_width" in self.references.get(name, {}):
            vs_refs[0] = 1.0
        values = [band_score({"band_width_ratio": ratio, "band_width_vs_reference": vs_ref}) for ratio, vs_ref in
                  zip(history.get("band_width_ratio", [math.nan] * count), vs_refs, strict=True)]
        left = checks_to_floor(values, self.trend_window)
        # recorded beside the measured metrics (nan while the band is not falling at every check)
        series = history.setdefault("band_checks_to_floor", [math.nan] * count)
        series[-1] = left if math.isfinite(left) else math.nan
        diag.metrics["band_checks_to_floor"] = series[-1]
        # a band wider than the whole cloud of points (score > 1) hedges over every input: its fall
        # to the cloud's size is the band being fitted, not a collapse trend
        if level == "healthy" and left <= self.trend_window and values[-1] < 1.0:
            level = "warning"
            reason = (f"{reason}; it fell at each of the last {self.trend_window} checks, from "
                      f"{values[-self.trend_window - 1]:.3g} to {values[-1]:.3g}: at that rate it reaches "
                      f"{BAND_COLLAPSED_RATIO:g} within {left:.1f} checks")
        if level != "healthy" and self.losses and self.losses[-1][0] == step:
            reason += f"; silent: the training loss is finite ({self.losses[-1][1]:.4g})"
        return level, reason

    def final_verdict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The end-of-run verdict: name → mode → ``{"level", "since", "reason"}``.

        A mode's level is the worst of its last ``recovery_checks`` checks at or after the warm-up
        (or of the last check, if none came after it): the warm-up delays alarms but never hides
        a state the run ended in. ``since`` is the first step of the unhealthy stretch the run
        ended in (None when healthy or n/a); ``reason`` the sentence of the worst check. The
        ``band`` mode is left out for names that were never given a band.
        """
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for name, steps in self.steps.items():
            out[name] = {}
            history = self.verdict_history.get(name, {})
            for mode in MODES:
                levels = self.levels[name].get(mode, [])
                if mode == "band" and all(lv == NOT_APPLICABLE for lv in levels):
                    continue
                reasons = history.get(mode, [""] * len(levels))
                judged = [i for i, at in enumerate(steps) if at >= self.warm_until] or [len(steps) - 1]
                recent = [i for i in judged[-self.recovery_checks:] if levels[i] != NOT_APPLICABLE]
                if not recent:
                    out[name][mode] = {"level": NOT_APPLICABLE, "since": None, "reason": reasons[-1] if reasons else ""}
                    continue
                worst = max(recent, key=lambda i: (LEVELS.index(levels[i]), i))
                level = levels[worst]
                since = None
                if level != "healthy":
                    start = worst
                    while start > 0 and levels[start - 1] in ("warning", "collapsed"):
                        start -= 1
                    since = steps[start]
                out[name][mode] = {"level": level, "since": since, "reason": reasons[worst]}
        return out

    @property
    def worst(self) -> str:
        """The most severe current level over every name and mode."""
        return worst_level(lv for d in self.latest.values() for lv in d.verdict.values())

    def state_dict(self) -> dict[str, Any]:
        """Everything the monitor has seen, as plain containers (for checkpoints; NaN kept as float)."""
        return {
            "steps": {k: list(v) for k, v in self.steps.items()},
            "history": {k: {m: list(v) for m, v in h.items()} for k, h in self.history.items()},
            "levels": {k: {m: list(v) for m, v in lv.items()} for k, lv in self.levels.items()},
            "references": {k: dict(v) for k, v in self.references.items()},
            "first_unhealthy": {k: dict(v) for k, v in self.first_unhealthy.items()},
            "latest": {
                k: {"metrics": dict(d.metrics), "verdict": dict(d.verdict), "reasons": dict(d.reasons)}
                for k, d in self.latest.items()
            },
            "alarms": [asdict(a) for a in self.alarms],
            "verdict_history": {k: {m: list(v) for m, v in h.items()} for k, h in self.verdict_history.items()},
            "losses": [list(x) for x in self.losses],
            "collapse_loss": self.collapse_loss,
            "warmup_ended": self.warmup_ended,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a resumed run keeps its reference and history)."""
        self.steps = {k: [int(s) for s in v] for k, v in state["steps"].items()}
        self.history = {k: {m: [float(x) for x in v] for m, v in h.items()} for k, h in state["history"].items()}
        self.levels = {k: {m: list(v) for m, v in lv.items()} for k, lv in state["levels"].items()}
        self.references = {k: {m: float(x) for m, x in v.items()} for k, v in state["references"].items()}
        self.first_unhealthy = {k: {m: int(s) for m, s in v.items()} for k, v in state["first_unhealthy"].items()}
        self.latest = {
            k: Diagnosis({m: float(x) for m, x in d["metrics"].items()}, dict(d["verdict"]), dict(d["reasons"]))
            for k, d in state["latest"].items()
        }
        self.alarms = [Alarm(**a) for a in state["alarms"]]
        self.verdict_history = {k: {m: list(v) for m, v in h.items()} for k, h in state.get("verdict_history", {}).items()}
        self.losses = [(int(s), float(v)) for s, v in state.get("losses", [])]
        if state.get("collapse_loss") is not None:
            self.collapse_loss = float(state["collapse_loss"])
        ended = state.get("warmup_ended")
        self.warmup_ended = None if ended is None else int(ended)

    def summary(self) -> dict[str, Any]:
        """JSON-able summary: latest verdicts and metrics, first unhealthy steps, alarms."""
        return {
            "latest": {name: d.to_dict() for name, d in self.latest.items()},
            "first_unhealthy": {k: dict(v) for k, v in self.first_unhealthy.items()},
            "alarms": [asdict(a) for a in self.alarms],
            "worst": self.worst,
            "final": self.final_verdict(),
        }


def replay(
    record: Mapping[str, Mapping[str, Any]],
    *,
    losses: list[tuple[int, float]] | list[list[float]] | None = None,
    collapse_loss: float | None = None,
    warmup_steps: int = 0,
    **kwargs: Any,
) -> CollapseMonitor:
    """A monitor that has seen recorded checks again, judged by the current rules.

    ``record``: name → ``{"steps": [...], "metrics": {metric: [...]}}`` (what
    :meth:`CollapseMonitor.state_dict` holds as ``steps`` / ``history``); ``losses``: (step,
    loss) pairs, each given to the check at the same step. The verdicts equal those of a
    monitor that saw the embeddings live (the rules read only these metrics).
    """
    monitor = CollapseMonitor(warmup_steps=warmup_steps, collapse_loss=collapse_loss, **kwargs)
    loss_at = {int(step): float(value) for step, value in (losses or []) if value is not None}
    position = {name: {int(s): i for i, s in enumerate(entry["steps"])} for name, entry in record.items()}
    for step in sorted({s for at in position.values() for s in at}):
        diagnoses = {}
        for name, entry in record.items():
            i = position[name].get(step)
            if i is None:
                continue
            metrics = {k: (math.nan if v[i] is None else float(v[i])) for k, v in entry["metrics"].items()}
            metrics = {k: v for k, v in metrics.items()
                       if not (math.isnan(v) and k.startswith(("code", "band")))}
            reference = monitor.references.get(name) if monitor.use_reference else None
            diagnoses[name] = judge(metrics, reference)
        monitor.observe(step, diagnoses, loss=loss_at.get(step))
    return monitor
