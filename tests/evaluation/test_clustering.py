"""Clustering scores: NMI/ARI equal scikit-learn's, ACC equals the best permutation, k-means, codes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from collapselab.evaluation import (
    adjusted_rand_index,
    code_clustering,
    contingency_table,
    hungarian_accuracy,
    kmeans_clustering,
    normalized_mutual_info,
)

from .conftest import make_blobs


def _random_partitions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    return rng.integers(0, rng.integers(1, 7), n), rng.integers(0, rng.integers(1, 7), n)


EDGE_CASES = [
    (np.zeros(10, int), np.zeros(10, int)),  # both one cluster
    (np.zeros(10, int), np.arange(10)),  # one cluster vs all singletons
    (np.arange(10), np.arange(10)[::-1]),  # all singletons, relabelled
    (np.array([0, 0, 1, 1]), np.array([5, 5, 9, 9])),  # identical up to names
    (np.array([0, 1]), np.array([0, 0])),
]


@pytest.mark.parametrize("seed", range(25))
def test_nmi_and_ari_equal_sklearn_on_random_partitions(seed):
    a, b = _random_partitions(seed)
    assert normalized_mutual_info(a, b) == pytest.approx(
        normalized_mutual_info_score(a, b), abs=1e-12
    )
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


@pytest.mark.parametrize("case", range(len(EDGE_CASES)))
def test_nmi_and_ari_equal_sklearn_on_degenerate_partitions(case):
    a, b = EDGE_CASES[case]
    assert normalized_mutual_info(a, b) == pytest.approx(
        normalized_mutual_info_score(a, b), abs=1e-12
    )
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def _best_permutation_accuracy(labels_true, labels_pred):
    """Try every one-to-one cluster→class map (padding the smaller side with empty groups)."""
    table = contingency_table(labels_true, labels_pred)
    size = max(table.shape)
    padded = np.zeros((size, size), dtype=np.int64)
    padded[: table.shape[0], : table.shape[1]] = table
    best = max(
        sum(padded[perm[j], j] for j in range(size)) for perm in itertools.permutations(range(size))
    )
    return best / table.sum()


@pytest.mark.parametrize("seed", range(20))
def test_hungarian_accuracy_equals_brute_force_best_permutation_up_to_6_clusters(seed):
    a, b = _random_partitions(100 + seed)
    assert hungarian_accuracy(a, b) == pytest.approx(_best_permutation_accuracy(a, b), abs=1e-12)


def test_hungarian_accuracy_beats_identity_matching_when_clusters_are_renamed():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    renamed = np.array([2, 2, 2, 0, 0, 1, 1, 1, 0])
    assert hungarian_accuracy(truth, renamed) == pytest.approx(8 / 9)
    assert float(np.mean(truth == renamed)) == 0.0


def test_kmeans_recovers_well_separated_classes_perfectly():
    features, labels = make_blobs(40, 5, 16, spread=0.05, seed=0)
    assert kmeans_clustering(features, labels, n_init=3) == {"nmi": 1.0, "ari": 1.0, "acc": 1.0}


def test_kmeans_ignores_feature_norms_after_l2_normalisation():
    features, labels = make_blobs(40, 4, 8, spread=0.6, seed=1)
    scales = (
        torch.rand(
            len(features), 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64
        )
        * 100
    )
    plain = kmeans_clustering(features, labels, n_init=3, seed=5)
    assert kmeans_clustering(features * (scales + 0.01), labels, n_init=3, seed=5) == pytest.approx(
        plain, abs=1e-9
    )


def test_kmeans_on_collapsed_features_scores_zero_nmi():
    labels = torch.arange(4).repeat(25)
    features = torch.ones(100, 8) + 1e-9 * torch.randn(
        100, 8, generator=torch.Generator().manual_seed(0)
    )
    result = kmeans_clustering(features, labels, n_init=2)
    assert result["nmi"] < 0.2 and result["acc"] < 0.5


def test_code_clustering_uses_the_argmax_of_code_probabilities():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    probs = torch.softmax(torch.eye(3)[[2, 2, 0, 0, 1, 1]] * 5, dim=1)
    assert code_clustering(probs, labels) == {"codes_nmi": 1.0, "codes_ari": 1.0, "codes_acc": 1.0}
    one_code = code_clustering(torch.zeros(6, dtype=torch.int64), labels)
    assert one_code["codes_nmi"] == 0.0 and one_code["codes_acc"] == pytest.approx(2 / 6)
