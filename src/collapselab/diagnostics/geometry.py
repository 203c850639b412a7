"""Geometric measurements of collapse (Wang & Isola, ICML 2020; SimSiam; docs/diagnostics.md).

Inputs are (N, D) embeddings as tensors or ndarrays; computation is float64 on the input's
device; results are Python floats.
"""

from __future__ import annotations

import math

import torch

from collapselab._validation import ArrayLike, InputError, as_float64_matrix, check_same_shape

NORM_EPS = 1e-12
"""Rows are divided by max(‖z‖, NORM_EPS): an all-zero row stays zero (as F.normalize does)."""

PAIRWISE_CHUNK = 2048
"""Rows per block when forming pairwise distances, bounding memory at CHUNK × N floats."""


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their Euclidean norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)


def alignment(z: ArrayLike, z_positive: ArrayLike, alpha: float = 2.0) -> float:
    """Alignment E_{pos pairs} ‖f(x) − f(x⁺)‖₂^α of L2-normalised embeddings (Wang & Isola 2020, Eq. 4).

    Row i of ``z`` and row i of ``z_positive`` form a positive pair (two views of one input).
    0 for perfectly invariant embeddings, at most 2^α.
    """
    if alpha <= 0:
        raise InputError(f"alignment: alpha must be > 0, got {alpha}")
    a = as_float64_matrix(z, "z", min_samples=1)
    b = as_float64_matrix(z_positive, "views", min_samples=1)
    check_same_shape(a, b, "z", "views")
    dist = (l2_normalize(a) - l2_normalize(b)).norm(dim=1)
    return float(dist.pow(alpha).mean())


def uniformity(z: ArrayLike, t: float = 2.0) -> float:
    """Uniformity log E_{i<j} exp(−t ‖f(x_i) − f(x_j)‖²) of L2-normalised rows (Wang & Isola 2020, Eq. 5).

    Averaged over the N(N−1)/2 distinct pairs (the diagonal is excluded), evaluated with a
    log-sum-exp in row blocks so memory stays O(PAIRWISE_CHUNK · N). 0 at complete collapse;
    more negative means more uniform. Bounded below by −2t·N/(N − 1) (Jensen, with
    Σ_{i<j}‖u_i − u_j‖² ≤ N²); isotropic points in high dimension approach −2t.
    """
    if t <= 0:
        raise InputError(f"uniformity: t must be > 0, got {t}")
    return uniformity_of_unit_rows(l2_normalize(as_float64_matrix(z)), t)


def uniformity_of_unit_rows(u: torch.Tensor, t: float = 2.0) -> float:
    """:func:`uniformity` of rows that are already L2-normalised float64 (no validation)."""
    n = u.shape[0]
    # the mean over pairs i < j equals the mean over ordered pairs i != j (d_ij = d_ji)
    logsums = []
    for start in range(0, n, PAIRWISE_CHUNK):
        block = u[start : start + PAIRWISE_CHUNK]
        sq = (2.0 - 2.0 * block @ u.T).clamp_min(0.0)  # squared distances of unit vectors
        logits = -t * sq
        rows = torch.arange(len(block), device=u.device)
        logits[rows, rows + start] = -math.inf
        logsums.append(torch.logsumexp(logits.flatten(), dim=0))
    return float(torch.logsumexp(torch.stack(logsums), dim=0)) - math.log(n * (n - 1))


def mean_pairwise_cosine(z: ArrayLike) -> float:
    """Mean cosine similarity over ordered pairs i ≠ j, exactly and in O(N·D).

    With u_i = z_i/‖z_i‖: Σ_{i≠j} u_iᵀu_j = ‖Σ_i u_i‖² − Σ_i ‖u_i‖², divided by N(N − 1).
    Near 1 at complete collapse — but also for non-negative (post-ReLU) features of a healthy or
    random network, so it is reported, not used for a verdict (docs/diagnostics.md, 'Verdicts').
    """
    return point_statistics(as_float64_matrix(z))[0]["mean_pairwise_cosine"]


def normalized_std(z: ArrayLike) -> float:
    """SimSiam's collapse indicator: mean over dimensions of the batch std of z/‖z‖.

    0 at complete collapse, ≈ 1/√D for an isotropic Gaussian (Chen & He 2021, §4.1). Uses the
    unbiased (N − 1) standard deviation, as ``torch.std`` and lightly's ``std_of_l2_normalized``.
    Not centred: non-negative features of a healthy network also give small values.
    """
    return point_statistics(as_float64_matrix(z))[0]["normalized_std"]


def collapse_level(z: ArrayLike) -> float:
    """lightly's collapse level max(0, 1 − √D · normalized_std): 0 when spread, 1 at collapse."""
    return point_statistics(as_float64_matrix(z))[0]["collapse_level"]


def relative_variance(z: ArrayLike) -> float:
    """Centred spread relative to the feature norm: tr Σ / E‖z‖² ∈ [0, 1].

    The fraction of the embeddings' second moment that varies across samples. 0 at complete
    collapse (every row the same vector, wherever it is); 1 for zero-mean embeddings. Unlike
    raw cosines it is not fooled by a common offset such as the positive mean of ReLU features
    (docs/diagnostics.md, 'Verdicts'). Returns 0.0 when all embeddings are zero.
    """
    return point_statistics(as_float64_matrix(z))[0]["relative_variance"]


def directional_variance(z: ArrayLike) -> float:
    """Spread of the directions: tr Cov(u) = 1 − ‖mean_i u_i‖² for u_i = z_i/‖z_i‖, in [0, 1].

    0 when every embedding points the same way (whatever their norms): for a cosine-based loss,
    a kNN probe or a normalised projector such embeddings are one point. ≈ 1 for isotropic data.
    Zero rows are left out (they have no direction); 0.0 if every row is zero.
    """
    return point_statistics(as_float64_matrix(z))[0]["directional_variance"]


def total_variance(z: ArrayLike) -> float:
    """Absolute spread tr Σ = E‖z − z̄‖² (biased). Track its trend: a shrinking embedding keeps
    scale-invariant measures flat while tr Σ falls by orders of magnitude (docs/diagnostics.md)."""
    return point_statistics(as_float64_matrix(z))[0]["total_variance"]


def point_statistics(x: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """All O(N·D) measurements of a validated float64 (N, D) matrix, sharing norms and centring.

    Returns ({total_variance, relative_variance, directional_variance, normalized_std,
    collapse_level, mean_pairwise_cosine, mean_norm}, unit rows u). The public functions above
    are views of it; ``diagnose`` calls it once instead of making one pass per measurement.
    Zero rows stay zero in u and are left out of the mean direction.
    """
    n, d = x.shape
    sq_norms = x.pow(2).sum(dim=1)
    norms = sq_norms.sqrt()
    centred_sq = (x - x.mean(dim=0, keepdim=True)).pow(2).sum(dim=1)
    second_moment = float(sq_norms.mean())
    variance = float(centred_sq.mean())
    u = x / norms.clamp_min(NORM_EPS)[:, None]
    u_sum = u.sum(dim=0)
    nonzero = int((norms > 0).sum())
    u_mean_nonzero = u_sum / max(nonzero, 1)
    std = float(u.std(dim=0).mean())
    stats = {
        "total_variance": variance,
        "relative_variance": 0.0 if second_moment == 0.0 else min(1.0, variance / second_moment),
        "directional_variance": 0.0 if nonzero == 0 else max(0.0, 1.0 - float(u_mean_nonzero.pow(2).sum())),
        "normalized_std": std,
        "collapse_level": max(0.0, 1.0 - math.sqrt(d) * std),
        "mean_pairwise_cosine": (float(u_sum.pow(2).sum()) - float(u.pow(2).sum())) / (n * (n - 1)),
        "mean_norm": float(norms.mean()),
    }
    return stats, u
