"""Clustering quality: k-means on L2-normalised features, and argmax codes → NMI, ARI, ACC.

With the contingency table n_ij = #{samples of class i in cluster j}, row sums a_i, column sums
b_j and N samples (docs/evaluation.md, 'Clustering'; all in float64 / exact integers):

- NMI (arithmetic normalisation, scikit-learn's default; Strehl & Ghosh 2002, Vinh et al. 2010):
  I = Σ_ij (n_ij/N) log(N n_ij / (a_i b_j)), H(a) = −Σ_i (a_i/N) log(a_i/N),
  NMI = I / ((H(a) + H(b)) / 2); 1 when both partitions are a single cluster, 0 when only one is.
- ARI (Hubert & Arabie 1985): with C(n) = n(n−1)/2, index = Σ_ij C(n_ij),
  expected = Σ_i C(a_i) Σ_j C(b_j) / C(N), maximum = (Σ_i C(a_i) + Σ_j C(b_j)) / 2,
  ARI = (index − expected) / (maximum − expected); 1 when the denominator is 0 (identical trivial
  partitions).
- ACC: max over one-to-one maps m from clusters to classes of (1/N) Σ_i [y_i = m(c_i)], found by
  the Hungarian algorithm (``scipy.optimize.linear_sum_assignment`` on the contingency table;
  clusters left unmatched when there are more clusters than classes count as errors).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from collapselab._validation import ArrayLike, InputError, as_tensor
from collapselab.diagnostics.clusters import kmeans_assignments
from collapselab.evaluation._inputs import (
    categorical_codes,
    check_count,
    check_features,
    check_labels,
    check_seed,
)

DEFAULT_N_INIT = 10


def _partition(labels: ArrayLike, name: str) -> np.ndarray:
    t = as_tensor(categorical_codes([labels], [name])[0], name)
    if t.ndim != 1:
        raise InputError(
            f"{name}: expected a 1-D array of cluster/class labels, got shape {tuple(t.shape)}"
        )
    if len(t) == 0:
        raise InputError(f"{name}: got an empty array")
    t = check_labels(t, len(t), name, name)
    return torch.unique(t.cpu(), return_inverse=True)[1].numpy()


def contingency_table(labels_true: ArrayLike, labels_pred: ArrayLike) -> np.ndarray:
    """(classes, clusters) int64 counts n_ij of samples with class i and cluster j."""
    a = _partition(labels_true, "labels_true")
    b = _partition(labels_pred, "labels_pred")
    if len(a) != len(b):
        raise InputError(
            f"labels_true has {len(a)} entries but labels_pred has {len(b)}; pass one per sample"
        )
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """NMI with arithmetic-mean normalisation (see the module docstring)."""
    table = contingency_table(labels_true, labels_pred)
    n = int(table.sum())
    a, b = table.sum(axis=1), table.sum(axis=0)
    if len(a) == len(b) == 1:
        return 1.0
    i, j = np.nonzero(table)
    nij = table[i, j].astype(np.float64)
    mutual_info = float((nij / n * (np.log(nij) + math.log(n) - np.log(a[i]) - np.log(b[j]))).sum())
    mean_entropy = (_entropy(a, n) + _entropy(b, n)) / 2
    if mean_entropy <= 0 or mutual_info <= 0:
        return 0.0
    return min(1.0, mutual_info / mean_entropy)


def adjusted_rand_index(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """ARI (see the module docstring), pair counts in exact integers."""
    table = contingency_table(labels_true, labels_pred)

    def pairs(x: np.ndarray) -> int:
        return sum(int(v) * (int(v) - 1) // 2 for v in x.ravel() if v > 1)

    n = int(table.sum())
    index = pairs(table)
    sum_a, sum_b = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    total = n * (n - 1) // 2
    expected = sum_a * sum_b / total if total else 0.0
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def hungarian_accuracy(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """ACC: the best one-to-one cluster→class matching (Hungarian algorithm), as a fraction."""
    from scipy.optimize import linear_sum_assignment

    table = contingency_table(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum()) / float(table.sum())


def cluster_scores(labels_true: ArrayLike, labels_pred: ArrayLike) -> dict[str, float]:
    """``{"nmi", "ari", "acc"}`` of a predicted partition against the classes."""
    return {
        "nmi": normalized_mutual_info(labels_true, labels_pred),
        "ari": adjusted_rand_index(labels_true, labels_pred),
        "acc": hungarian_accuracy(labels_true, labels_pred),
    }


def kmeans_clustering(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    n_clusters: int | None = None,
    n_init: int = DEFAULT_N_INIT,
    seed: int = 0,
) -> dict[str, float]:
    """k-means (k-means++ init, ``n_init`` seeded restarts, best inertia kept) on L2-normalised features.

    ``n_clusters`` defaults to the number of distinct labels. Returns ``{"nmi", "ari", "acc"}``.
    """
    n_init = check_count(n_init, "n_init", what=" (k-means restarts)")
    seed = check_seed(seed)
    x = check_features(features, "features")
    y = check_labels(labels, x.shape[0], "labels", "features")
    n_classes = int(torch.unique(y).numel())
    if n_classes < 2:
        raise InputError(
            f"labels hold a single class ({int(y[0])}); clustering scores need at least 2 classes"
        )
    k = n_classes if n_clusters is None else int(n_clusters)
    with warnings.catch_warnings():
        # Collapsed features hold fewer distinct points than k; the scores (NMI ≈ 0) say so.
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        assignments = kmeans_assignments(
            F.normalize(x.to(torch.float64), dim=1), k, seed=seed, n_init=n_init
        )
    return cluster_scores(y, assignments)


def code_clustering(codes: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """NMI, ARI and ACC of argmax codes (FALCON, SwAV, DINO prototypes) against the classes.

    ``codes``: (N,) code indices, or (N, c) code probabilities or logits (argmax taken). Returns
    ``codes_nmi``, ``codes_ari``, ``codes_acc``.
    """
    t = as_tensor(codes, "codes")
    if t.ndim == 2:
        assignments = check_features(t, "codes").argmax(dim=1)
    elif t.ndim == 1:
        assignments = check_labels(t, len(t), "codes", "codes")
    else:
        raise InputError(
            f"codes: expected (N,) code indices or (N, c) probabilities, got shape {tuple(t.shape)}"
        )
    y = check_labels(labels, len(assignments), "labels", "codes")
    return {f"codes_{name}": value for name, value in cluster_scores(y, assignments).items()}
