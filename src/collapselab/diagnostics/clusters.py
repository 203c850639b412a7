"""Cluster and intracluster collapse (Sansone et al. 2025): code usage and within-cluster spread."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from collapselab._validation import (
    ArrayLike,
    InputError,
    as_float64_matrix,
    as_tensor,
    describe_nonfinite,
)

PROBABILITY_TOLERANCE = 1e-4
"""Rows of a code-probability matrix must sum to 1 within this tolerance."""


def _entropy(p: torch.Tensor) -> float:
    """Shannon entropy −Σ p log p (natural log) of a probability vector; 0 log 0 = 0."""
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def _as_codes(
    codes: ArrayLike, n_codes: int | None
) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    """Return (probabilities or None, hard assignments, number of codes) from either input form."""
    t = as_tensor(codes, "codes")
    if t.ndim == 1:
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()):
                raise InputError(describe_nonfinite(t, "codes"))
            if not bool((t == t.round()).all()):
                raise InputError(
                    "codes: a 1-D array must hold integer code assignments (or pass (N, c) probabilities)"
                )
        assign = t.to(torch.int64)
        if len(assign) == 0:
            raise InputError("codes: got an empty array")
        if int(assign.min()) < 0:
            raise InputError(f"codes: assignments must be >= 0, got minimum {int(assign.min())}")
        c = int(assign.max()) + 1 if n_codes is None else n_codes
        if int(assign.max()) >= c:
            raise InputError(
                f"codes: assignment {int(assign.max())} is out of range for n_codes={c}"
            )
        return None, assign, c
    if t.ndim == 2:
        probs = as_float64_matrix(t, "codes", min_samples=1)
        if n_codes is not None and n_codes != probs.shape[1]:
            raise InputError(
                f"codes: n_codes={n_codes} but the probability matrix has {probs.shape[1]} columns"
            )
        if (
            float(probs.min()) < 0
            or float((probs.sum(dim=1) - 1).abs().max()) > PROBABILITY_TOLERANCE
        ):
            raise InputError(
                "codes: rows of an (N, c) code matrix must be probabilities (non-negative, summing to 1); "
                "apply softmax to logits first"
            )
        return probs, probs.argmax(dim=1), probs.shape[1]
    raise InputError(
        f"codes: expected (N,) assignments or (N, c) probabilities, got shape {tuple(t.shape)}"
    )


def code_usage(codes: ArrayLike, n_codes: int | None = None) -> dict[str, float]:
    """How many of c codes (prototypes, clusters) the samples use.

    ``codes`` is either (N,) integer assignments or (N, c) probabilities (rows summing to 1);
    probabilities are turned into hard assignments by argmax. With the usage histogram
    q_j = #{i: a_i = j}/N:

    - ``code_entropy`` H(q) = −Σ_j q_j log q_j, ``code_perplexity`` exp H(q) (= k when k codes are
      used equally), ``code_used_fraction`` = #{j: q_j > 0}/c, ``code_max_perplexity`` = min(c, N)
      (the most a batch of N samples can show) and ``code_perplexity_ratio`` = perplexity / that;
      ``code_used_vs_chance`` = codes used / c·(1 − (1 − 1/c)^N), the number N samples drawn
      uniformly at random would use on average (≈ 1 for balanced use, whatever N/c is).
    - For probabilities also ``code_soft_perplexity`` exp H(p̄) of the mean probability p̄, and
      ``code_sample_entropy_ratio`` = mean_i H(p_i) / log c: 1 when every sample's code
      distribution is uniform (DINO's "uniform" collapse), near 0 for confident assignments.
    """
    probs, assign, c = _as_codes(codes, n_codes)
    n = len(assign)
    counts = torch.bincount(assign, minlength=c).to(torch.float64)
    entropy = _entropy(counts / n)
    out = {
        "n_codes": float(c),
        "code_entropy": entropy,
        "code_perplexity": math.exp(entropy),
        "code_used": float((counts > 0).sum()),
        "code_used_fraction": float((counts > 0).sum()) / c,
        "code_max_perplexity": float(min(c, n)),
    }
    out["code_perplexity_ratio"] = out["code_perplexity"] / out["code_max_perplexity"]
    out["code_used_vs_chance"] = out["code_used"] / (c * -math.expm1(n * math.log1p(-1.0 / c))) if c > 1 else 1.0
    if probs is not None:
        out["code_soft_perplexity"] = math.exp(_entropy(probs.mean(dim=0)))
        sample_entropy = -(probs * probs.clamp_min(1e-300).log()).sum(dim=1).mean()
        out["code_sample_entropy_ratio"] = float(sample_entropy) / math.log(c) if c > 1 else 0.0
    return out


def kmeans_assignments(
    z: ArrayLike, n_clusters: int, seed: int = 0, n_init: int = 3
) -> torch.Tensor:
    """k-means (scikit-learn, k-means++ init, ``n_init`` restarts, seeded) cluster labels of ``z``."""
    from sklearn.cluster import KMeans

    x = as_float64_matrix(z)
    if not 1 <= n_clusters <= x.shape[0]:
        raise InputError(f"n_clusters must be between 1 and N={x.shape[0]}, got {n_clusters}")
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    return torch.from_numpy(km.fit_predict(x.cpu().numpy()).astype(np.int64))


MIN_CLUSTER_MEMBERS = 5
"""Clusters smaller than this are left out of ``intracluster_min_ratio``: two or three similar
inputs sit close together by chance (a healthy SwAV run on digits had a 30-code cluster at 0.004
of the total spread while the clusters' mean was 0.14), which says nothing about collapse."""


def intracluster_spread(
    z: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    n_clusters: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Within-cluster variance relative to the total variance.

    With cluster means μ_k and overall mean z̄:
    W = (1/N) Σ_k Σ_{i∈k} ‖z_i − μ_k‖², T = (1/N) Σ_i ‖z_i − z̄‖² = tr Σ, and
    ``intracluster_ratio`` = W / T ∈ [0, 1] (1 − the k-means "explained" fraction). Per cluster k
    with at least :data:`MIN_CLUSTER_MEMBERS` members, s_k = mean_{i∈k} ‖z_i − μ_k‖² / T;
    ``intracluster_min_ratio`` = min_k s_k (nan if no cluster is that large) flags a single
    collapsed cluster. Clusters come from ``labels`` (N,) or, if absent, from
    k-means with ``n_clusters``. A negative label (-1) marks an unlabelled row, as in the
    datasets: such rows are left out (W and T are over the labelled rows), and labels with no
    labelled row are an :class:`InputError`. A cluster with a single member has no spread to
    measure (its one row is its centroid, which would count as a collapsed cluster): its row is
    left out in the same way, ``intracluster_singletons`` counts such clusters, ``n_clusters``
    counts the clusters measured, and when no cluster has two members both ratios are NaN
    (the verdict is then n/a). When T = 0 (complete collapse) both ratios are 0.
    """
    x = as_float64_matrix(z)
    n = x.shape[0]
    if labels is None:
        if n_clusters is None:
            raise InputError(
                "intracluster_spread: pass labels, or n_clusters to cluster with k-means"
            )
        lab = kmeans_assignments(x, n_clusters, seed=seed)
    else:
        keep, lab = labelled_mask(labels, n)
        if not bool(keep.any()):
            raise InputError("labels: every row is unlabelled (-1): no clusters to measure")
        if not bool(keep.all()):
            x, lab = x[keep.to(x.device)], lab[keep]
            n = x.shape[0]
        lab = torch.unique(lab, return_inverse=True)[1]
    lab = lab.to(x.device)
    counts = torch.bincount(lab)
    single = counts[lab] < 2  # rows alone in their cluster: no spread to measure
    singletons = int((counts == 1).sum())
    if bool(single.all()):
        return {"intracluster_ratio": math.nan, "intracluster_min_ratio": math.nan,
                "n_clusters": 0.0, "intracluster_singletons": float(singletons)}
    if bool(single.any()):
        x, lab = x[~single], torch.unique(lab[~single], return_inverse=True)[1]
        n = x.shape[0]
    k = int(lab.max()) + 1
    onehot = torch.nn.functional.one_hot(lab, k).to(torch.float64)  # (N, k)
    sizes = onehot.sum(dim=0)
    means = (onehot.T @ x) / sizes[:, None]
    within_sq = (x - means[lab]).pow(2).sum(dim=1)
    per_cluster = onehot.T @ within_sq
    total = float((x - x.mean(dim=0, keepdim=True)).pow(2).sum(dim=1).mean())
    big = sizes >= MIN_CLUSTER_MEMBERS
    if total == 0.0:
        ratio, min_ratio = 0.0, 0.0
    else:
        ratio = float(per_cluster.sum()) / n / total
        min_ratio = (
            float((per_cluster[big] / sizes[big]).min()) / total if bool(big.any()) else math.nan
        )
    return {
        "intracluster_ratio": min(1.0, ratio),
        "intracluster_min_ratio": min_ratio,
        "n_clusters": float(k),
        "intracluster_singletons": float(singletons),
    }


def labelled_mask(labels: ArrayLike, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check (N,) integer cluster labels; returns (mask of labelled rows, the labels). A
    negative label (-1) marks an unlabelled row."""
    lab = as_tensor(labels, "labels")
    if lab.ndim != 1 or len(lab) != n:
        raise InputError(f"labels: expected shape ({n},) to match z, got {tuple(lab.shape)}")
    if lab.is_floating_point() and not bool((lab == lab.round()).all()):
        raise InputError("labels: expected integer cluster labels")
    return lab >= 0, lab


def code_geometry(h: ArrayLike, codes: ArrayLike) -> dict[str, float]:
    """FALCON's collapse guarantees as numbers (Sansone, Lebailly & Tuytelaars, ICML 2025):
    decorrelated features (HᵀH → I) and block-diagonal HHᵀ with balanced blocks of size n/c.

    ``h`` (n, f) projector outputs, ``codes`` (n, c) probabilities or (n,) assignments.

    - ``decorrelation_offdiag`` = mean_{i≠j} C_ij² with C the (f × f) correlation matrix of the
      columns of h (each standardised over the batch); 0 when decorrelated, 1 when all columns are
      equal up to sign. Computed from the n × n Gram matrix (‖ZᵀZ‖_F = ‖ZZᵀ‖_F). For independent
      columns and n samples its expected value is ≈ 1/n (``decorrelation_floor``); with f > n the
      columns cannot all be decorrelated, so read it against that floor.
    - Block structure of HHᵀ, blocks = argmax codes: ``block_within_cosine`` (mean cosine of pairs
      sharing a code, self-pairs excluded; NaN if no code holds 2 samples) and
      ``block_between_cosine`` (pairs in different codes).
    - Block sizes: ``block_size_max_ratio`` = largest block / (n/c) (1 = perfectly balanced over
      all c codes), ``block_size_cv`` = std/mean of the sizes over the c codes (0 = balanced).
    """
    x = as_float64_matrix(h, "h", min_samples=2)
    _, assign, c = _as_codes(codes, None)
    n = x.shape[0]
    if assign.shape[0] != n:
        raise InputError(f"codes: expected {n} rows (one per row of h), got {assign.shape[0]}")
    z = x - x.mean(dim=0)
    std = z.pow(2).mean(dim=0).sqrt()
    z = z[:, std > 0] / std[std > 0]
    k = z.shape[1]
    if k >= 2:
        gram = z @ z.T / n  # ‖C‖_F² = ‖ZᵀZ/n‖_F² = ‖ZZᵀ/n‖_F²; diag(C) = 1
        offdiag = float(((gram.pow(2).sum() - k) / (k * (k - 1))).clamp(min=0.0))
    else:
        offdiag = math.nan
    unit = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    cos = unit @ unit.T
    same = assign[:, None] == assign[None, :]
    eye = torch.eye(n, dtype=torch.bool)
    within, between = same & ~eye, ~same
    sizes = torch.bincount(assign, minlength=c).double()
    return {
        "decorrelation_offdiag": offdiag,
        "decorrelation_floor": 1.0 / n,
        "block_within_cosine": float(cos[within].mean()) if within.any() else math.nan,
        "block_between_cosine": float(cos[between].mean()) if between.any() else math.nan,
        "block_size_max_ratio": float(sizes.max() / (n / c)),
        "block_size_cv": float(sizes.std(unbiased=False) / sizes.mean()),
    }
