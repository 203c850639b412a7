"""``diagnose``: every collapse measurement of an embedding set, and a verdict per collapse mode.

The four modes (Sansone, Lebailly & Tuytelaars, ICML 2025, arXiv 2410.04959) and the measurement
each verdict rests on:

=============  ==========================================================================
complete       spread = min(tr Σ / E‖z‖², 1 − ‖mean z/‖z‖‖²): the centred spread relative to the
               feature norm, of points or of directions; given a reference (the same network
               at initialisation) its fall, and the fall of the absolute spread tr Σ
dimensional    effective rank relative to min(D, N − 1), and to the reference's effective rank
cluster        code-usage perplexity relative to min(c, N), codes used against chance, per-sample entropy
intracluster   within-cluster variance / total variance, for labels or argmax codes
band           the width of an uncertainty band σ (when one is given) against the spread of
               the embedding, and the fraction of inputs whose band is below a floor
               (:mod:`collapselab.diagnostics.band`)
=============  ==========================================================================

The ``band`` mode appears in a verdict only when a band is given (``diagnose(z, band=σ)``);
without one it is absent from ``Diagnosis.verdict`` and printed as "n/a".

Thresholds are module constants, each with the reason for its value; they were calibrated on
random-initialisation, healthy and genuinely collapsed embeddings of real networks (see
``tests/diagnostics/test_calibration.py``) and on the calibration half of the collapse zoo
(``benchmarks/collapse_zoo.py``), and reported on its held-out half and on fresh replicates
(docs/diagnostics.md).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from collapselab._validation import (
    ArrayLike,
    InputError,
    as_float64_matrix,
    as_tensor,
    check_same_shape,
)
from collapselab.diagnostics import band as band_mode
from collapselab.diagnostics import clusters, geometry, spectrum

MODES = ("complete", "dimensional", "cluster", "intracluster", "band")
LEVELS = ("healthy", "warning", "collapsed")  # ordered by severity; "n/a" when not measurable
NOT_APPLICABLE = "n/a"

# --- complete collapse ----------------------------------------------------------------------
# "spread" = min(relative_variance, directional_variance): how close the embeddings are to one
# point (tr Σ / E‖z‖²) or to one ray (1 − ‖mean z/‖z‖‖²), which cosine-based losses cannot tell apart.
COMPLETE_COLLAPSED_SPREAD = 1e-10
"""Without a reference, "collapsed" needs spread below 1e-10 (std < 1e-5 of the norm): differences
this small are within ~100x of float32 rounding, so no information can survive. Deep random ReLU
nets reach 1e-8 at initialisation (12 layers, PyTorch default init), so a snapshot cannot say more."""
COMPLETE_WARNING_SPREAD = 1e-3
"""Std under ~3 % of the norm: a point or a ray, unless the network started there (compare with a
reference). SimSiam without stop-gradient on digits: 6e-5; random 2-layer ReLU MLP: 0.02-0.2."""
COMPLETE_COLLAPSED_VS_REFERENCE = 1e-2
"""With a reference: spread fell by two orders of magnitude (SimSiam without stop-gradient: 3e-3)."""
COMPLETE_WARNING_VS_REFERENCE = 1e-1
"""With a reference: spread fell tenfold."""
COMPLETE_COLLAPSED_SHRINK = 1e-4
"""tr Σ below this fraction of the reference's: the embedding has shrunk to a point (4 orders)."""
COMPLETE_WARNING_SHRINK = 1e-2
"""tr Σ fell by two orders of magnitude from the reference: shrinking, although ranks look fine."""

# --- dimensional collapse -------------------------------------------------------------------
DIMENSIONAL_COLLAPSED_RATIO = 0.02
"""Without a reference: effective rank under 2 % of the dimensions available, min(D, N − 1).
Lenient because what the data and architecture allow is unknown: healthy backbone features on
digits use 5–12 % of 256 dims; SimSiam without stop-gradient leaves 3 % of 64."""
DIMENSIONAL_WARNING_RATIO = 0.05
"""Without a reference: under 5 % of the available dimensions."""
DIMENSIONAL_COLLAPSED_VS_REFERENCE = 0.1
"""With a reference: effective rank fell below 10 % of its reference value. Calibration on digits
(benchmarks/diagnostics_calibration.py, MLP: SimSiam without stop-gradient 0.10, VICReg 0.50,
SimSiam 0.64; trainer runs with the small CNN, projector output over 100 steps: healthy BYOL
0.19–0.24 (a trained projector concentrates on the ~10 class directions, from 23 effective dims
at initialisation to 4–6), BYOL without predictor at τ = 0.9 0.06, SimSiam without predictor or
stop-gradient 0.04–0.05)."""
DIMENSIONAL_WARNING_VS_REFERENCE = 0.15
"""With a reference: effective rank fell below 15 % of its reference value."""
DIMENSIONAL_COLLAPSED_OCCUPANCY = 0.01
"""Whatever the reference: effective rank under 1 % of the available dimensions min(D, N − 1) is
collapse. A low start is no excuse: a reference says where the network began, not what it should
use. Collapse zoo, calibration half (benchmarks/collapse_zoo.py, docs/diagnostics.md): collapsed
runs ended at 0.78-1.12 %, healthy ones at 1.30 % and above (short small-CNN runs on 16-px
CIFAR-10 images, projector output: 6.7 of 511); a fresh replicate had a healthy one at 1.15 %."""
DIMENSIONAL_WARNING_OCCUPANCY = 0.01
"""No warning band below the collapse line: the zoo's first version warned under 1.25 % (to catch
3 of 256), and a fresh replicate showed a healthy 16-px SimSiam run at 1.15 % (5.9 of 511). The
BYOL ResNet-18 projector on CIFAR-10 reported at 3-4 of 256 (1.2-1.6 %) is therefore not called
from occupancy alone; what the reference adds is judged by the rules below."""
DIMENSIONAL_SPAN_COLLAPSED = 0.02
"""Whatever the reference: the embedding spans (``span``, the numerical rank at
:data:`~collapselab.diagnostics.spectrum.SPAN_RTOL`) under 2 % of the available directions
min(D, N − 1): every other direction holds less than a millionth of the largest variance. Unlike
a low effective rank, which healthy projectors reach by concentrating their variance (4-5 % in
the collapse zoo), a lost span means vanished singular values (Jing et al. 2022). Collapse zoo,
re-run 2026-12-07 (docs/diagnostics.md): healthy runs spanned at least 52 % at the end (one
exception, 16 %, inside the label's margin over a collapsed backbone); BYOL without predictor
and EMA, MoCo on digits and Barlow Twins without its off-diagonal term 0.8-3.7 %; the synthetic
3-of-256 embedding 1.2 %."""
DIMENSIONAL_SPAN_WARNING = 0.1
"""The span covers under 10 % of the available directions: a warning."""
DIMENSIONAL_COLLAPSED_ABSOLUTE = 2.0
"""Fewer than 2 effective directions is collapse whatever the reference, when at least 4
dimensions are available (a 2- or 3-unit bottleneck is low-rank by construction)."""

# --- cluster collapse -----------------------------------------------------------------------
CLUSTER_COLLAPSED_PERPLEXITY_RATIO = 0.1
"""Code perplexity below 10 % of min(c, N): nearly all samples share a few codes."""
CLUSTER_WARNING_PERPLEXITY_RATIO = 0.3
"""Below 30 %: most codes idle (uniform random use of c codes by N ≥ 3c samples scores > 0.9)."""
CLUSTER_WARNING_USED = 0.75
"""Codes used / the number N uniform random draws would use (``code_used_vs_chance``) below 0.75:
a quarter of the codes idle (FALCON with β = 1 on digits ends on 23 of 32, 0.72)."""
CLUSTER_COLLAPSED_USED = 0.2
"""Below 0.2: four in five codes idle."""
CLUSTER_COLLAPSED_PERPLEXITY = 1.5
"""Effectively one code in use."""
CLUSTER_UNIFORM_SAMPLE_ENTROPY = 0.99
"""Per-sample code entropy above 99 % of log c: every sample's distribution is ~uniform, so the
codes carry no information (DINO's uniform collapse) even though argmax usage looks spread."""

# --- intracluster collapse ------------------------------------------------------------------
INTRACLUSTER_COLLAPSED_RATIO = 0.01
"""Within-cluster variance under 1 % of the total: clusters have shrunk to points."""
INTRACLUSTER_WARNING_RATIO = 0.05
"""Under 5 %: little spread left inside clusters (neural-collapse territory)."""
INTRACLUSTER_ONE_CLUSTER_RATIO = 1e-3
"""One cluster (of at least 5 members) whose spread is under 0.1 % of the total is a warning
even when the clusters' mean is healthy: a point among clusters. A tenth of the collapsed line,
because the smallest of many clusters is an extreme value: a healthy SwAV run on digits (30 codes,
kNN 98.6 %) had one at 0.004-0.007 while all of them averaged 0.14."""

MAX_PAIRWISE_SAMPLES = 1024
"""``uniformity`` is O(N²·D): ``diagnose`` evaluates it on this many rows (a seeded subsample)."""


@dataclass
class Diagnosis:
    """Collapse measurements of one embedding set and a verdict per mode.

    ``metrics``: name → float (NaN where undefined); ``verdict``: mode → "healthy" | "warning" |
    "collapsed" | "n/a"; ``reasons``: mode → one sentence naming the metric behind the verdict.
    """

    metrics: dict[str, float]
    verdict: dict[str, str]
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def worst(self) -> str:
        """The most severe level over all modes ("healthy" if every mode is healthy or n/a)."""
        return worst_level(self.verdict.values())

    @property
    def collapsed(self) -> bool:
        """True if any mode is "collapsed"."""
        return self.worst == "collapsed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN/Inf become None)."""
        metrics = {k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()}
        return {"metrics": metrics, "verdict": dict(self.verdict), "reasons": dict(self.reasons)}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        m = self.metrics
        lines = [f"Collapse diagnosis: {int(m['n_samples'])} samples x {int(m['dim'])} dims"]
        width = max(len(mode) for mode in MODES)
        for mode in MODES:
            level = self.verdict.get(mode, NOT_APPLICABLE)
            reason = self.reasons.get(mode, "no band given" if mode == "band" else "")
            lines.append(f"  {mode:<{width}}  {level:<9}  {reason}")
        lines.append("  metrics:")
        for key in _DISPLAY_ORDER:
            if key in m:
                lines.append(f"    {key:<26} {_fmt(m[key])}")
        return "\n".join(lines)


_DISPLAY_ORDER = (
    "total_variance",
    "relative_variance",
    "directional_variance",
    "spread",
    "normalized_std",
    "collapse_level",
    "mean_pairwise_cosine",
    "stable_rank",
    "effective_rank",
    "effective_rank_ratio",
    "rankme",
    "alpha_req",
    "eigenvalue_log_ratio",
    "components_90",
    "span",
    "span_ratio",
    "uniformity",
    "alignment",
    "effective_rank_vs_reference",
    "spread_vs_reference",
    "total_variance_vs_reference",
    "code_perplexity",
    "code_used_fraction",
    "code_sample_entropy_ratio",
    "intracluster_ratio",
    "intracluster_min_ratio",
    "band_width",
    "band_spread",
    "band_width_ratio",
    "band_below_floor",
)


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4f}"


def worst_level(levels: Iterable[str]) -> str:
    """The most severe of ``levels`` ("healthy" when none is a level, e.g. all "n/a")."""
    return max((lv for lv in levels if lv in LEVELS), key=LEVELS.index, default="healthy")


def _worse(a: str, b: str) -> str:
    return worst_level((a, b))


def _level(value: float, collapsed_below: float, warning_below: float) -> str:
    """"collapsed" below the first threshold, "warning" below the second, else "healthy"."""
    if value < collapsed_below:
        return "collapsed"
    return "warning" if value < warning_below else "healthy"


def _reference_metrics(
    reference: Diagnosis | Mapping[str, float] | None,
) -> Mapping[str, float] | None:
    if reference is None:
        return None
    return reference.metrics if isinstance(reference, Diagnosis) else reference


def _ratio_text(ratio: float) -> str:
    return f"{ratio:.2g}×" if ratio < 0.1 else f"{ratio:.2f}×"


def complete_verdict(metrics: Mapping[str, float]) -> tuple[str, str]:
    """Verdict on complete collapse from the spread (and, given a reference, its fall and tr Σ's)."""
    spread = metrics["spread"]
    reason = f"the points' spread is {_fmt(spread)} of their size (1 = spread out, 0 = one point or one ray)"
    vs_ref = metrics.get("spread_vs_reference", math.nan)
    shrink = metrics.get("total_variance_vs_reference", math.nan)
    if spread < COMPLETE_COLLAPSED_SPREAD:
        return "collapsed", reason
    if math.isfinite(vs_ref):
        reason += f", {_ratio_text(vs_ref)} what it was at the start"
        level = _level(vs_ref, COMPLETE_COLLAPSED_VS_REFERENCE, COMPLETE_WARNING_VS_REFERENCE)
        if math.isfinite(shrink):
            if shrink < COMPLETE_WARNING_SHRINK:
                reason += f"; the total variance shrank to {_ratio_text(shrink)} its start"
            level = _worse(level, _level(shrink, COMPLETE_COLLAPSED_SHRINK, COMPLETE_WARNING_SHRINK))
        return level, reason
    if spread < COMPLETE_WARNING_SPREAD:
        return "warning", reason + "; pass a reference (e.g. at initialisation) to tell collapse from where training started"
    return "healthy", reason


def dimensional_verdict(metrics: Mapping[str, float]) -> tuple[str, str]:
    """Verdict on dimensional collapse: the effective rank's share of the available dimensions
    min(D, N − 1) ("occupancy"), beside its fall from the reference when there is one; the worse
    of the two decides."""
    dim, erank = metrics["dim"], metrics["effective_rank"]
    available = metrics["available_dims"]
    if dim < 2 or available < 2:
        return NOT_APPLICABLE, "fewer than 2 dimensions available"
    reason = f"the embedding uses {erank:.1f} of {int(available)} available directions (effective rank)"
    vs_ref = metrics.get("effective_rank_vs_reference", math.nan)
    occupancy = metrics["effective_rank_ratio"]
    if math.isfinite(vs_ref) and vs_ref > 0:
        reason += f"; at the start it used {erank / vs_ref:.1f}"
    span_level, span_reason = span_verdict(metrics)
    if span_level in ("warning", "collapsed"):
        reason += span_reason
    if erank < DIMENSIONAL_COLLAPSED_ABSOLUTE and available >= 2 * DIMENSIONAL_COLLAPSED_ABSOLUTE:
        return "collapsed", reason
    if math.isfinite(vs_ref):
        level = _worse(_level(vs_ref, DIMENSIONAL_COLLAPSED_VS_REFERENCE, DIMENSIONAL_WARNING_VS_REFERENCE),
                       _level(occupancy, DIMENSIONAL_COLLAPSED_OCCUPANCY, DIMENSIONAL_WARNING_OCCUPANCY))
        return _worse(level, span_level), reason
    return _worse(_level(occupancy, DIMENSIONAL_COLLAPSED_RATIO, DIMENSIONAL_WARNING_RATIO), span_level), reason


def span_verdict(metrics: Mapping[str, float]) -> tuple[str, str]:
    """The dimensional level from the span alone (``span_ratio`` = span / min(D, N − 1), against
    :data:`DIMENSIONAL_SPAN_COLLAPSED` and :data:`DIMENSIONAL_SPAN_WARNING`) and the clause that
    says so; ("n/a", "") when the span was not measured (metrics recorded before it existed)."""
    ratio = metrics.get("span_ratio", math.nan)
    if not math.isfinite(ratio):
        return NOT_APPLICABLE, ""
    level = _level(ratio, DIMENSIONAL_SPAN_COLLAPSED, DIMENSIONAL_SPAN_WARNING)
    return level, (f"; it spans only {int(metrics['span'])} of them (each other direction holds under a "
                   f"millionth of the largest variance)")


def cluster_verdict(metrics: Mapping[str, float]) -> tuple[str, str]:
    """Verdict on cluster collapse from code usage: the perplexity's share of min(c, N), and the
    codes used against what N random draws would use; "n/a" without codes."""
    if "code_perplexity" not in metrics:
        return NOT_APPLICABLE, "no codes given"
    perplexity, ratio = metrics["code_perplexity"], metrics["code_perplexity_ratio"]
    most = metrics["code_max_perplexity"]
    used = metrics["code_used"]
    reason = (f"{int(used)} of {int(metrics.get('n_codes', most))} codes are in use, as evenly as "
              f"{perplexity:.1f} equally used codes would be")
    uniform = metrics.get("code_sample_entropy_ratio", math.nan)
    if math.isfinite(uniform) and uniform > CLUSTER_UNIFORM_SAMPLE_ENTROPY:
        return "collapsed", f"every sample's code distribution is uniform ({uniform:.3f} × log c): the codes say nothing"
    if most < 2:
        return NOT_APPLICABLE, reason
    vs_chance = metrics.get("code_used_vs_chance", math.nan)
    if perplexity < CLUSTER_COLLAPSED_PERPLEXITY or ratio < CLUSTER_COLLAPSED_PERPLEXITY_RATIO:
        return "collapsed", reason
    if math.isfinite(vs_chance) and vs_chance < CLUSTER_COLLAPSED_USED:
        return "collapsed", reason
    if ratio < CLUSTER_WARNING_PERPLEXITY_RATIO or (math.isfinite(vs_chance) and vs_chance < CLUSTER_WARNING_USED):
        return "warning", reason
    return "healthy", reason


def intracluster_verdict(metrics: Mapping[str, float]) -> tuple[str, str]:
    """Verdict on intracluster collapse from the within/total variance ratio; "n/a" without clusters."""
    if "intracluster_ratio" not in metrics:
        if metrics.get("n_clusters") == 0:
            return NOT_APPLICABLE, "every label is -1 (unlabelled): no clusters"
        return NOT_APPLICABLE, "no labels or codes to define clusters"
    singletons = int(metrics.get("intracluster_singletons", 0.0) or 0)
    if not math.isfinite(metrics["intracluster_ratio"]):
        if singletons:
            return NOT_APPLICABLE, (f"every cluster has a single sample ({singletons} clusters): "
                                    f"no within-cluster spread to measure")
        return NOT_APPLICABLE, "the within-cluster spread is not measured"
    if metrics["n_clusters"] < 2:
        return NOT_APPLICABLE, "only one cluster: its spread is the whole spread, nothing to compare"
    ratio, smallest = metrics["intracluster_ratio"], metrics["intracluster_min_ratio"]
    reason = (f"the spread inside the {int(metrics['n_clusters'])} clusters is {_fmt(ratio)} of the total "
              f"(0 = every cluster a point)")
    if singletons:
        reason += f"; {singletons} single-sample clusters left out"
    level = _level(ratio, INTRACLUSTER_COLLAPSED_RATIO, INTRACLUSTER_WARNING_RATIO)
    if level != "healthy":
        return level, reason
    if math.isfinite(smallest) and smallest < INTRACLUSTER_ONE_CLUSTER_RATIO:
        return "warning", reason + f"; one cluster is at {_fmt(smallest)}"
    return "healthy", reason


def verdicts(metrics: Mapping[str, float]) -> tuple[dict[str, str], dict[str, str]]:
    """Apply the verdict rules to a metrics dict; returns (verdict, reasons). The ``band`` mode
    is judged only when band metrics are present."""
    verdict, reasons = {}, {}
    for mode, rule in (
        ("complete", complete_verdict),
        ("dimensional", dimensional_verdict),
        ("cluster", cluster_verdict),
        ("intracluster", intracluster_verdict),
    ):
        verdict[mode], reasons[mode] = rule(metrics)
    if verdict["complete"] == "collapsed":
        # a point has rank 0, one code's worth of information and no spread inside any cluster;
        # what is left is noise
        for mode in ("dimensional", "cluster", "intracluster"):
            if verdict[mode] != NOT_APPLICABLE:
                verdict[mode], reasons[mode] = "collapsed", "implied by complete collapse (the spread left is noise)"
    elif verdict["cluster"] == "healthy" and verdict["dimensional"] == "collapsed":
        reasons["cluster"] += ENTROPY_IS_NOT_GEOMETRY
    if "band_width_ratio" in metrics:
        verdict["band"], reasons["band"] = band_mode.band_verdict(metrics)
    return verdict, reasons


ENTROPY_IS_NOT_GEOMETRY = (
    "; code usage is a statistic of the assignments, not of the geometry: the codes are spread "
    "while the embedding is collapsed to a few directions (see the dimensional mode)"
)
"""Appended to a healthy cluster verdict when the dimensional mode is collapsed: high code entropy
does not mean the points are apart (codes can be any function of a collapsed embedding, e.g. a
hash of a rank-1 one; docs/diagnostics.md "Entropy is not geometry")."""


def _subsample(x: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= limit:
        return x
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=gen)[:limit].to(x.device)
    return x[idx]


SCALED_METRICS = {"total_variance": 2, "top_eigenvalue": 2, "mean_norm": 1, "band_width": 1, "band_spread": 1}
"""Metrics in the input's units (the rest are scale-free): restored after rescaling."""
RESCALE_RANGE = (2.0**-300 * 2.0**150, 2.0**150)
"""Inputs whose largest |value| lies outside about (1e-45, 1e45) are divided by a power of two
(exact) before measuring: squares of values near 1e±200 overflow or underflow float64."""


def _rescaled(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``x`` divided by a power of two that brings its largest |value| near 1, when that lies
    outside :data:`RESCALE_RANGE`; returns (x, the divisor)."""
    peak = float(x.abs().max()) if x.numel() else 0.0
    if peak == 0.0 or RESCALE_RANGE[0] <= peak <= RESCALE_RANGE[1]:
        return x, 1.0
    scale = math.ldexp(1.0, math.frexp(peak)[1])
    return x / scale, scale


METRIC_NAMES = frozenset(
    {
        "n_samples", "dim", "input_scale", "available_dims",
        "total_variance", "relative_variance", "directional_variance", "spread", "normalized_std",
        "collapse_level", "mean_pairwise_cosine", "mean_norm", "uniformity", "alignment",
        "stable_rank", "spectral_stable_rank", "effective_rank", "effective_rank_ratio", "rankme",
        "alpha_req", "eigenvalue_log_ratio", "components_90", "span", "span_ratio", "top_eigenvalue",
        "n_codes", "code_entropy", "code_perplexity", "code_used", "code_used_fraction",
        "code_max_perplexity", "code_perplexity_ratio", "code_used_vs_chance",
        "code_soft_perplexity", "code_sample_entropy_ratio",
        "intracluster_ratio", "intracluster_min_ratio", "n_clusters", "intracluster_singletons",
        "band_width", "band_spread", "band_width_ratio", "band_below_floor", "band_dims",
        "effective_rank_vs_reference", "spread_vs_reference", "total_variance_vs_reference",
        "band_width_vs_reference",
    }
)
"""Every metric :func:`diagnose` can report: the names a reference given as a mapping may use."""


def check_reference_metrics(reference: Mapping[Any, Any]) -> dict[str, float]:
    """A reference given as a metrics mapping, checked: every key a metric name
    (:data:`METRIC_NAMES`; a near miss is suggested) and every value a real number (None = not
    measured, read as NaN). Returns name → float; raises a one-line :class:`InputError`."""
    out: dict[str, float] = {}
    for key, value in reference.items():
        if not isinstance(key, str) or key not in METRIC_NAMES:
            close = difflib.get_close_matches(str(key), METRIC_NAMES, n=1)
            hint = (f"did you mean {close[0]!r}?" if close else
                    f"the reference-relative verdicts read {', '.join(sorted(set(REFERENCE_RATIOS.values())))}")
            raise InputError(f"reference: unknown metric {key!r}; {hint}")
        if value is None:
            out[key] = math.nan
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InputError(f"reference: metric {key!r} must be a number, got {value!r} ({type(value).__name__})")
        out[key] = float(value)
    return out


def check_pairwise_samples(value: Any, where: str) -> None:
    """The uniformity subsample size: an integer >= 2, else an :class:`InputError` that starts
    with ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise InputError(f"{where} must be an integer >= 2 (uniformity needs pairs of rows), got {value!r}")


def _as_reference(
    reference: Diagnosis | Mapping[str, float] | ArrayLike | None, dim: int, max_pairwise_samples: int, seed: int
) -> Diagnosis | Mapping[str, float] | None:
    """A reference given as embeddings is diagnosed, a metrics mapping checked
    (:func:`check_reference_metrics`); one of another width is an error."""
    if reference is None:
        return None
    if isinstance(reference, Mapping) and not isinstance(reference, Diagnosis):
        reference = check_reference_metrics(reference)
    elif not isinstance(reference, Diagnosis):
        reference = diagnose(reference, max_pairwise_samples=max_pairwise_samples, seed=seed)
    ref_dim = _reference_metrics(reference).get("dim")  # type: ignore[union-attr]
    if ref_dim is not None and math.isfinite(ref_dim) and int(ref_dim) != dim:
        raise InputError(f"reference: has {int(ref_dim)} dimensions, z has {dim}; a reference must be the "
                         f"same embedding at another time (e.g. at initialisation)")
    return reference


def diagnose(
    z: ArrayLike,
    *,
    views: ArrayLike | None = None,
    codes: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    reference: Diagnosis | Mapping[str, float] | ArrayLike | None = None,
    band: ArrayLike | None = None,
    max_pairwise_samples: int = MAX_PAIRWISE_SAMPLES,
    seed: int = 0,
) -> Diagnosis:
    """Measure every collapse mode of the embeddings ``z`` (N, D) and give a verdict per mode.

    Args:
        z: embeddings, tensor or ndarray (N ≥ 2 rows), or the path of a file
            :func:`collapselab.diagnostics.io.load_array` reads (.npy, .npz, .pt, .csv).
            Values beyond about 1e±45 are divided by a power of two first (exact; squares near
            1e±200 would overflow float64); ``total_variance`` and the other metrics in the
            input's units are then scaled back, ``input_scale`` records the divisor.
        views: a second view of the same N inputs (adds ``alignment``).
        codes: (N,) code assignments or (N, c) code probabilities (cluster mode; their argmax
            also defines clusters for the intracluster mode when ``labels`` is absent).
        labels: (N,) cluster/class labels for the intracluster mode (they take precedence over
            ``codes`` there); -1 marks an unlabelled row, left out. When every row is -1 the mode
            is n/a and there are no intracluster metrics.
        reference: a Diagnosis, metrics dict or embeddings (N', D) of a reference state,
            typically the same network at initialisation; dimensional and complete verdicts
            are then judged relative to it. Its width must be D. A metrics dict may only use
            metric names :func:`diagnose` reports, with numbers as values (else an
            :class:`InputError` naming the near miss).
        band: the uncertainty band of each row of ``z`` (its mean), widths ≥ 0 of shape (N,),
            (N, 1) or (N, D) (``band`` mode, :mod:`collapselab.diagnostics.band`); without it
            the band mode is absent from the verdict.
        max_pairwise_samples: rows (seeded subsample) used for the O(N²) uniformity; >= 2.
        seed: seed of that subsample.
    """
    check_pairwise_samples(max_pairwise_samples, "max_pairwise_samples:")
    if isinstance(z, (str, os.PathLike)):
        from collapselab.diagnostics.io import load_array

        z = load_array(z)
    x = as_float64_matrix(z, "z")
    n, d = x.shape
    reference = _as_reference(reference, d, max_pairwise_samples, seed)
    x, scale = _rescaled(x)
    metrics: dict[str, float] = {"n_samples": float(n), "dim": float(d)}
    point, unit_rows = geometry.point_statistics(x)
    metrics.update(point)
    metrics["spread"] = min(metrics["relative_variance"], metrics["directional_variance"])
    metrics.update(spectrum.spectral_metrics(*spectrum.spectra_of_validated(x)))
    metrics["available_dims"] = float(min(d, n - 1))
    metrics["effective_rank_ratio"] = metrics["effective_rank"] / metrics["available_dims"]
    metrics["span_ratio"] = metrics["span"] / metrics["available_dims"]
    metrics["uniformity"] = geometry.uniformity_of_unit_rows(_subsample(unit_rows, max_pairwise_samples, seed))
    if views is not None:
        v = as_float64_matrix(views, "views")
        check_same_shape(x, v, "z", "views")
        metrics["alignment"] = geometry.alignment(x, _rescaled(v)[0])
    if band is not None:  # measured in the rescaled units of x, restored below
        metrics.update(band_mode.band_metrics(x, band_mode.as_band(band, n, d) / scale))
    if scale != 1.0:  # back to the input's units (inf where float64 cannot hold them)
        metrics["input_scale"] = scale
        for key, power in SCALED_METRICS.items():
            if key in metrics:
                with np.errstate(over="ignore"):
                    metrics[key] = float(np.float64(metrics[key]) * np.float64(scale) ** power)

    cluster_labels = None
    if codes is not None:
        usage = clusters.code_usage(codes)
        code_tensor = as_tensor(codes, "codes")
        if code_tensor.shape[0] != n:
            raise InputError(f"codes: expected {n} rows to match z, got {code_tensor.shape[0]}")
        metrics.update(usage)
        cluster_labels = code_tensor.argmax(dim=1) if code_tensor.ndim == 2 else code_tensor
    if labels is not None:  # labels define the clusters; rows labelled -1 are left out
        cluster_labels = labels
        if not bool(clusters.labelled_mask(labels, n)[0].any()):
            cluster_labels, metrics["n_clusters"] = None, 0.0  # every row unlabelled: no clusters
    if cluster_labels is not None:
        metrics.update(clusters.intracluster_spread(x, cluster_labels))

    return judge(metrics, reference)


REFERENCE_RATIOS = {
    "effective_rank_vs_reference": "effective_rank",
    "spread_vs_reference": "spread",
    "total_variance_vs_reference": "total_variance",
    "band_width_vs_reference": "band_width",
}
"""Metrics judged relative to a reference: ratio name → the metric it divides."""


def judge(metrics: Mapping[str, float], reference: Diagnosis | Mapping[str, float] | None = None) -> Diagnosis:
    """The verdicts of measured ``metrics`` (what :func:`diagnose` computed), relative to
    ``reference``'s where given: the rules alone, so recorded metrics can be judged again."""
    metrics = {k: float(v) for k, v in metrics.items() if k not in REFERENCE_RATIOS}
    ref = _reference_metrics(reference)
    if ref is not None:
        for ratio, key in REFERENCE_RATIOS.items():
            base = ref.get(key, 0.0)
            if key in metrics and base is not None and math.isfinite(base) and base > 0:
                metrics[ratio] = metrics[key] / base
    verdict, reasons = verdicts(metrics)
    return Diagnosis(metrics=metrics, verdict=verdict, reasons=reasons)
