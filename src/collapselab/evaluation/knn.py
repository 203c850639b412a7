"""Weighted k-nearest-neighbour classification of frozen features (docs/evaluation.md).

Protocol (Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
CVPR 2018, weighted kNN evaluation; the defaults of lightly's ``knn_predict``, k = 200 and τ = 0.1;
solo-learn's ``WeightedKNNClassifier`` votes the same way): features are L2-normalised, so the
similarity s_ij = ⟨x̂_i, x̂_j⟩ is the cosine. A test sample i takes its k most similar training
samples N_k(i), each voting for its class with weight exp(s_ij / τ):

    score_c(i) = Σ_{j ∈ N_k(i)} exp(s_ij / τ) · [y_j = c]

The prediction is argmax_c score_c; top-5 counts a hit when the true class is among the five
highest scores. Ties go to the lower class index (a stable sort), and a class that received no
vote never counts as a hit.

Memory: test rows are processed in chunks of b rows, so only a (b, N_train) similarity block
exists at a time (b·N_train ≤ ``max_block_elements``, 2²⁴ = 64 MiB in float32 by default) instead
of the full (N_test, N_train) matrix (50,000 × 10,000 → 2 GB).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from collapselab._validation import ArrayLike, InputError, check_number
from collapselab.evaluation._inputs import (
    check_count,
    check_features,
    check_labels,
    check_split_pair,
    resolve_device,
)

DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.1
DEFAULT_BLOCK_ELEMENTS = 2**24


@torch.no_grad()
def knn_scores(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    *,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    n_classes: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """Class scores score_c(i) = Σ_{j∈N_k(i)} exp(s_ij/τ)·[y_j = c] of the weighted kNN vote.

    Args:
        train_features: (N, D) features of the labelled bank; test_features: (M, D).
        train_labels: (N,) integer labels in 0..C−1.
        k: neighbours per test sample (capped at N); temperature: τ > 0.
        n_classes: C (default max label + 1).
        device: where to compute (default: the train features' device); dtype: compute precision.
        max_block_elements: bound on b·N for one (b, N) similarity block.

    Returns:
        (M, C) scores in ``dtype`` on ``device``.
    """
    xtr = check_features(train_features, "train_features")
    xte = check_features(test_features, "test_features")
    ytr = check_labels(train_labels, xtr.shape[0], "train_labels", "train_features")
    if xtr.shape[1] != xte.shape[1]:
        raise InputError(
            f"train_features have {xtr.shape[1]} dimensions but test_features have {xte.shape[1]}"
        )
    if int(ytr.min()) < 0:
        raise InputError(f"train_labels must be in 0..C-1, got minimum {int(ytr.min())}")
    k = check_count(k, "k", what=" of neighbours")
    temperature = check_number(temperature, "temperature", positive=True, what=" (kNN vote temperature)")
    n_classes = int(ytr.max()) + 1 if n_classes is None else int(n_classes)
    if int(ytr.max()) >= n_classes:
        raise InputError(
            f"train_labels hold label {int(ytr.max())}, out of range for n_classes={n_classes}"
        )
    dev = resolve_device(device, xtr)
    bank = F.normalize(xtr.to(device=dev, dtype=dtype), dim=1)
    bank_labels = ytr.to(dev)
    k = min(k, bank.shape[0])
    rows = max(1, max_block_elements // bank.shape[0])
    scores = torch.zeros(xte.shape[0], n_classes, dtype=dtype, device=dev)
    for start in range(0, xte.shape[0], rows):
        queries = F.normalize(xte[start : start + rows].to(device=dev, dtype=dtype), dim=1)
        similarity = queries @ bank.T  # (b, N): the only large block
        top_similarity, top_index = similarity.topk(k, dim=1)
        del similarity
        weights = top_similarity.div_(temperature).exp_()
        scores[start : start + rows].scatter_add_(1, bank_labels[top_index], weights)
    return scores


def hits_from_scores(scores: torch.Tensor, labels: torch.Tensor, top: int = 1) -> torch.Tensor:
    """(M,) bool: whether each row's label is among its ``top`` highest positive scores (ties:
    lower index). Per-query hits let two representations be compared on the same queries (a
    paired difference and its standard error)."""
    top = min(top, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    ranked = order.indices[:, :top]
    voted = order.values[:, :top] > 0
    return ((ranked == labels.to(ranked.device).unsqueeze(1)) & voted).any(dim=1)


def accuracy_from_scores(scores: torch.Tensor, labels: torch.Tensor, top: int = 1) -> float:
    """Fraction of rows whose label is among the ``top`` highest positive scores (ties: lower index)."""
    return float(hits_from_scores(scores, labels, top).double().mean())


def _split_scores(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    k: int,
    temperature: float,
    device: str | torch.device | None,
    dtype: torch.dtype = torch.float32,
    max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (M, C), test labels as 0..C−1) of a train/test pair whose labels may be any
    integers or text."""
    xtr, ytr, xte, yte, n_classes = check_split_pair(
        train_features, train_labels, test_features, test_labels
    )
    scores = knn_scores(xtr, ytr, xte, k=k, temperature=temperature, n_classes=n_classes, device=device,
                        dtype=dtype, max_block_elements=max_block_elements)
    return scores, yte


def knn_accuracy(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    *,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> dict[str, float]:
    """Weighted kNN top-1 and top-5 accuracy (fractions in [0, 1]) of test samples against the train bank.

    Labels may be any integers or text (class names); they are mapped to 0..C−1 over both
    splits. See :func:`knn_scores`.
    Returns ``{"knn_top1": ..., "knn_top5": ...}``.
    """
    scores, yte = _split_scores(train_features, train_labels, test_features, test_labels, k=k,
                                temperature=temperature, device=device, dtype=dtype,
                                max_block_elements=max_block_elements)
    return {
        "knn_top1": accuracy_from_scores(scores, yte, 1),
        "knn_top5": accuracy_from_scores(scores, yte, 5),
    }


def knn_hits(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    *,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    top: int = 1,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """(M,) bool: which test samples the weighted kNN classifies correctly (top-``top``); the mean
    is :func:`knn_accuracy`'s ``knn_top1`` (``top=1``). Two representations scored on the same
    queries give a paired difference, mean(h_a − h_b), whose standard error is
    std(h_a − h_b)/√M."""
    scores, yte = _split_scores(train_features, train_labels, test_features, test_labels, k=k,
                                temperature=temperature, device=device)
    return hits_from_scores(scores, yte, top)
