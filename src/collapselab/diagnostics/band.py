"""The ``band`` collapse mode: how wide an embedding's uncertainty band is against its spread.

A probabilistic embedding gives each input a mean μ_i (the rows of Z) and a band σ_i > 0, one
width per dimension (N, D) or one per input (N, 1) (:class:`collapselab.models.band.BandHead`).
The band collapses when σ shrinks to nothing against the distances between the means: every
input is then a point again, however finite the training loss (a Gaussian likelihood's
½ log σ² only drifts down like log σ). Measurements, in float64:

==========================  =========================================================================
``band_spread``             s = √(tr Σ_μ / D): the RMS per-dimension standard deviation of the means
                            (Σ_μ biased, 1/N, as everywhere in the diagnostics)
``band_width``              mean_i w_i, w_i = √(mean_d σ_id²): each input's RMS band width
``band_width_ratio``        mean_i w_i / s: the band against the spread (1 = as wide as the cloud
                            of means; 0 = every input a point). inf when the means have no spread
``band_below_floor``        the fraction of inputs with w_i / s < ``BAND_FLOOR_RATIO``
``band_dims``               1 (a scalar band) or D (a per-dimension band)
==========================  =========================================================================

The thresholds are decades of the ratio, fixed before any run was made and not fitted to one
(docs/diagnostics.md, "The band mode"). Their reading: a Gaussian band of width σ around means
spread by s carries at most ½ log(1 + s²/σ²) nats per dimension (the Gaussian channel's capacity,
Shannon 1948) -- at 1e-1 the band resolves ~10 positions per dimension of the cloud, at 1e-2 ~100:
the band no longer hedges between neighbouring inputs, it pins each to a point.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import torch

from collapselab._validation import ArrayLike, InputError, as_tensor, describe_nonfinite

BAND_WARNING_RATIO = 1e-1
"""Mean band under a tenth of the spread of μ: a warning (one decade below "as wide as the
spread"; the composite band recipe's prior sits at half the spread)."""
BAND_COLLAPSED_RATIO = 1e-2
"""Mean band under a hundredth of the spread: collapsed (two decades; each input is a point
against the distances between inputs)."""
BAND_FLOOR_RATIO = 1e-2
"""An input's band is "below the floor" when its width is under a hundredth of the spread (the
collapse line, applied per input)."""
BAND_COLLAPSED_BELOW = 0.5
"""More than half of the inputs below the floor: the typical input's band has collapsed, whatever
the mean (a few very wide bands can hold the mean up)."""
BAND_WARNING_BELOW = 0.1
"""More than a tenth of the inputs below the floor: the band has collapsed for a minority."""
BAND_WARNING_VS_REFERENCE = 1e-1
"""With a reference (the same network at initialisation, where the band starts at its designed
width): the mean band fell tenfold. The complete mode's rule for tr Σ (warning below 1e-2 × the
reference's) in units of a width; it catches a band that shrinks together with the embedding,
which the ratio to the spread cannot see."""
BAND_COLLAPSED_VS_REFERENCE = 1e-2
"""With a reference: the mean band fell a hundredfold (tr Σ's 1e-4 in units of a width)."""
BAND_WIDE_RATIO = 10.0
"""A band over ten times the spread is not collapse but hedges over every input: said in the
reason, the level stays healthy (the complete mode speaks for the means)."""

BAND_METRICS = ("band_width", "band_spread", "band_width_ratio", "band_below_floor", "band_dims")


def as_band(band: ArrayLike, n: int, d: int) -> torch.Tensor:
    """Validate a band for N = ``n`` inputs of width ``d``: (N,), (N, 1) or (N, D), finite, ≥ 0;
    returned as (N, 1) or (N, D) float64."""
    t = as_tensor(band, "band")
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"band: expected real numbers, got dtype {t.dtype}")
    t = t.to(torch.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != n or t.shape[1] not in (1, d):
        raise InputError(f"band: expected shape ({n},), ({n}, 1) or ({n}, {d}) to match z "
                         f"(one width per input or per dimension), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise InputError(describe_nonfinite(t, "band"))
    if bool((t < 0).any()):
        raise InputError(f"band: widths must be >= 0, got a minimum of {float(t.min()):.4g}")
    return t


def band_metrics(z: torch.Tensor, band: torch.Tensor) -> dict[str, float]:
    """The band measurements (module docstring) of validated float64 means ``z`` (N, D) and band
    (N, 1) or (N, D), in the same units."""
    n, d = z.shape
    centred = z - z.mean(dim=0, keepdim=True)
    spread = math.sqrt(float(centred.pow(2).sum()) / (n * d))
    widths = band.pow(2).mean(dim=1).sqrt()
    width = float(widths.mean())
    if spread > 0:
        per_input = widths / spread
        ratio = width / spread
    else:  # means without spread: any positive band is infinitely wide against it
        per_input = torch.where(widths > 0, math.inf, 0.0)
        ratio = math.inf if width > 0 else 0.0
    return {
        "band_width": width,
        "band_spread": spread,
        "band_width_ratio": ratio,
        "band_below_floor": float((per_input < BAND_FLOOR_RATIO).double().mean()),
        "band_dims": float(band.shape[1]),
    }


def band_verdict(metrics: Mapping[str, float]) -> tuple[str, str]:
    """Verdict on band collapse from ``band_width_ratio`` and ``band_below_floor``: collapsed when
    the mean band is under 1e-2 of the spread or over half of the inputs are below that floor;
    warning under 1e-1, or over a tenth of the inputs below the floor. With a reference
    (``band_width_vs_reference``) also: collapsed when the band fell below 1e-2 ×, warning below
    1e-1 × its reference width; the worse rule decides."""
    ratio, below = metrics["band_width_ratio"], metrics["band_below_floor"]
    reason = (f"the uncertainty band is {_ratio(ratio)} the spread of the embedding on average "
              f"(1 = as wide as the cloud of points, 0 = every input a point)")
    if below > 0:
        reason += f"; {below:.0%} of the inputs are below {BAND_FLOOR_RATIO:g} of it"
    vs_ref = metrics.get("band_width_vs_reference", math.nan)
    shrunk = math.isfinite(vs_ref)
    if shrunk:
        reason += f"; the band is {_ratio(vs_ref)} as wide as at the start"
    if ratio < BAND_COLLAPSED_RATIO or below > BAND_COLLAPSED_BELOW or (shrunk and vs_ref < BAND_COLLAPSED_VS_REFERENCE):
        return "collapsed", reason
    if ratio < BAND_WARNING_RATIO or below > BAND_WARNING_BELOW or (shrunk and vs_ref < BAND_WARNING_VS_REFERENCE):
        return "warning", reason
    if ratio > BAND_WIDE_RATIO:
        reason += "; wider than the spread itself, the band hedges over every input"
    return "healthy", reason


def _ratio(value: float) -> str:
    if not math.isfinite(value):
        return "infinitely wide against"
    return f"{value:.2g}×" if value < 0.1 else f"{value:.2f}×"


def band_score(metrics: Mapping[str, float]) -> float:
    """The number the band's thresholds read: min(band_width_ratio, band_width_vs_reference)
    (both are judged on the same ladder, 1e-1 warning and 1e-2 collapsed)."""
    vs_ref = metrics.get("band_width_vs_reference", math.nan)
    ratio = metrics.get("band_width_ratio", math.nan)
    return min(ratio, vs_ref) if math.isfinite(vs_ref) else ratio


def checks_to_floor(values: list[float], window: int, floor: float = BAND_COLLAPSED_RATIO) -> float:
    """Checks left before a falling band score reaches ``floor`` at the average log rate of its
    last ``window`` checks (inf when it is not falling at each of them, nan without enough
    history)."""
    if len(values) < window + 1:
        return math.nan
    recent = values[-(window + 1):]
    if not all(math.isfinite(v) and v > 0 for v in recent):
        return math.nan
    if not all(b < a for a, b in itertools.pairwise(recent)):
        return math.inf
    rate = (math.log(recent[0]) - math.log(recent[-1])) / window  # log-units per check
    return max(0.0, (math.log(recent[-1]) - math.log(floor)) / rate)
