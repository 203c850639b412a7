"""Collapse diagnostics: pure measurement functions, ``diagnose`` and the live ``CollapseMonitor``.

Every function takes an (N, D) tensor or ndarray (rows = samples) and computes in float64.
Formulas and sources: docs/diagnostics.md and each function's docstring.
"""

from collapselab.diagnostics.band import band_metrics
from collapselab.diagnostics.clusters import (
    code_geometry,
    code_usage,
    intracluster_spread,
    kmeans_assignments,
)
from collapselab.diagnostics.geometry import (
    alignment,
    collapse_level,
    directional_variance,
    mean_pairwise_cosine,
    normalized_std,
    relative_variance,
    total_variance,
    uniformity,
)
from collapselab.diagnostics.monitor import Alarm, CollapseMonitor, replay
from collapselab.diagnostics.spectrum import (
    StreamingCovariance,
    alpha_req,
    components_for_90_percent,
    covariance,
    effective_rank,
    eigenspectrum,
    eigenvalue_log_ratio,
    explained_variance_curve,
    normalized_singular_spectrum,
    rankme,
    span,
    spectral_metrics,
    spectral_stable_rank,
    stable_rank,
)
from collapselab.diagnostics.verdict import LEVELS, MODES, Diagnosis, diagnose

__all__ = [
    "LEVELS",
    "MODES",
    "Alarm",
    "CollapseMonitor",
    "Diagnosis",
    "StreamingCovariance",
    "alignment",
    "alpha_req",
    "band_metrics",
    "code_geometry",
    "code_usage",
    "collapse_level",
    "components_for_90_percent",
    "covariance",
    "diagnose",
    "directional_variance",
    "effective_rank",
    "eigenspectrum",
    "eigenvalue_log_ratio",
    "explained_variance_curve",
    "intracluster_spread",
    "kmeans_assignments",
    "mean_pairwise_cosine",
    "normalized_singular_spectrum",
    "normalized_std",
    "rankme",
    "relative_variance",
    "replay",
    "span",
    "spectral_metrics",
    "spectral_stable_rank",
    "stable_rank",
    "total_variance",
    "uniformity",
]
