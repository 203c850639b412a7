"""Weighted kNN: equals a float64 brute-force loop, votes as computed by hand, bounded blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collapselab.evaluation import accuracy_from_scores, knn_accuracy, knn_hits, knn_scores

from .conftest import make_blobs


def _brute_force_scores(train, train_labels, test, k, temperature, n_classes):
    """One test sample at a time, plain NumPy float64: cosine, sort, exp(s/τ) votes."""
    train = np.asarray(train, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    scores = np.zeros((len(test), n_classes))
    for i, query in enumerate(test):
        sims = [float(query @ row) / (np.linalg.norm(query) * np.linalg.norm(row)) for row in train]
        nearest = np.argsort(sims)[::-1][:k]
        for j in nearest:
            scores[i, int(train_labels[j])] += math.exp(sims[j] / temperature)
    return scores


@pytest.mark.parametrize("k", [1, 20, 200])
def test_knn_scores_equal_brute_force_float64_loop(k):
    g = torch.Generator().manual_seed(k)
    train = torch.randn(300, 12, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (300,), generator=g)
    test = torch.randn(40, 12, generator=g, dtype=torch.float64)
    scores = knn_scores(train, labels, test, k=k, temperature=0.1, n_classes=5, dtype=torch.float64)
    expected = _brute_force_scores(train, labels, test, k, 0.1, 5)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-10)


def test_knn_accuracy_equals_brute_force_top1_and_top5():
    train, train_labels = make_blobs(60, 8, 10, spread=0.9, seed=1)
    test, test_labels = make_blobs(20, 8, 10, spread=0.9, seed=2)
    expected = _brute_force_scores(train, train_labels, test, 20, 0.1, 8)
    ranked = np.argsort(-expected, axis=1, kind="stable")
    top1 = float(np.mean(ranked[:, 0] == test_labels.numpy()))
    top5 = float(np.mean([label in ranked[i, :5] for i, label in enumerate(test_labels.numpy())]))
    got = knn_accuracy(train, train_labels, test, test_labels, k=20, dtype=torch.float64)
    assert got == {"knn_top1": pytest.approx(top1, abs=0), "knn_top5": pytest.approx(top5, abs=0)}
    assert 0.2 < top1 < 1.0  # a case where the answer is neither trivial nor perfect


def test_knn_hits_are_the_brute_force_per_query_hits_and_average_to_the_accuracy():
    train, train_labels = make_blobs(60, 8, 10, spread=0.9, seed=3)
    test, test_labels = make_blobs(25, 8, 10, spread=0.9, seed=4)
    expected = _brute_force_scores(train, train_labels, test, 20, 0.1, 8)
    ranked = np.argsort(-expected, axis=1, kind="stable")
    hits = knn_hits(train, train_labels, test, test_labels, k=20, temperature=0.1)
    assert hits.dtype == torch.bool and hits.shape == (len(test),)
    assert hits.tolist() == list(ranked[:, 0] == test_labels.numpy())
    assert 0 < int(hits.sum()) < len(test)
    accuracy = knn_accuracy(train, train_labels, test, test_labels, k=20)["knn_top1"]
    assert accuracy == pytest.approx(float(hits.double().mean()), abs=0)
    top5 = knn_hits(train, train_labels, test, test_labels, k=20, top=5)
    assert top5.tolist() == [label in ranked[i, :5] for i, label in enumerate(test_labels.numpy())]


def test_weighted_vote_by_hand_lets_one_close_neighbour_beat_two_far_ones():
    # Query (1, 0). Neighbours: one class-0 point at cosine 1, two class-1 points at cosine 0.6,
    # a class-2 point at cosine -1 (outside k = 3).
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.0]], dtype=torch.float64)  # scale must not matter
    sharp = knn_scores(train, labels, query, k=3, temperature=0.1, dtype=torch.float64)
    assert sharp[0].tolist() == pytest.approx([math.exp(10), 2 * math.exp(6), 0.0], rel=1e-12)
    # τ = 1 flattens the weights: e^1 = 2.72 < 2 e^0.6 = 3.64, so the majority class wins.
    flat = knn_scores(train, labels, query, k=3, temperature=1.0, dtype=torch.float64)
    assert flat[0].tolist() == pytest.approx([math.e, 2 * math.exp(0.6), 0.0], rel=1e-12)
    assert int(sharp.argmax()) == 0 and int(flat.argmax()) == 1
    # Class 2 got no vote, so it is not a top-5 hit although only 3 classes exist.
    assert accuracy_from_scores(sharp, torch.tensor([2]), top=5) == 0.0
    assert accuracy_from_scores(sharp, torch.tensor([1]), top=5) == 1.0


def test_ties_go_to_the_lower_class_index():
    scores = torch.tensor([[1.0, 3.0, 3.0]])
    assert accuracy_from_scores(scores, torch.tensor([1]), top=1) == 1.0
    assert accuracy_from_scores(scores, torch.tensor([2]), top=1) == 0.0


def test_chunking_over_test_rows_does_not_change_scores():
    train, train_labels = make_blobs(50, 4, 6, spread=0.5, seed=3)
    test, _ = make_blobs(30, 4, 6, spread=0.5, seed=4)
    whole = knn_scores(train, train_labels, test, k=15, dtype=torch.float64)
    one_row_at_a_time = knn_scores(
        train, train_labels, test, k=15, dtype=torch.float64, max_block_elements=1
    )
    seven_rows = knn_scores(
        train, train_labels, test, k=15, dtype=torch.float64, max_block_elements=7 * 200
    )
    # Same neighbours and votes; only the matmul kernel (rows per call) differs, at rounding level.
    torch.testing.assert_close(one_row_at_a_time, whole, rtol=1e-12, atol=0)
    torch.testing.assert_close(seven_rows, whole, rtol=1e-12, atol=0)


def test_k_larger_than_the_bank_uses_every_training_sample():
    train, train_labels = make_blobs(5, 2, 3, spread=0.3, seed=5)
    test, _ = make_blobs(4, 2, 3, spread=0.3, seed=6)
    capped = knn_scores(train, train_labels, test, k=200, dtype=torch.float64)
    exact = knn_scores(train, train_labels, test, k=len(train), dtype=torch.float64)
    assert torch.equal(capped, exact)


def test_float32_default_gives_the_float64_accuracy_on_separated_classes():
    train, train_labels = make_blobs(100, 10, 32, spread=0.4, seed=7)
    test, test_labels = make_blobs(30, 10, 32, spread=0.4, seed=8)
    single = knn_accuracy(train.float(), train_labels, test.float(), test_labels)
    double = knn_accuracy(train, train_labels, test, test_labels, dtype=torch.float64)
    assert single == double


def test_labels_need_not_be_contiguous():
    train, train_labels = make_blobs(40, 3, 5, spread=0.5, seed=9)
    test, test_labels = make_blobs(10, 3, 5, spread=0.5, seed=10)
    mapping = torch.tensor([7, -3, 100])
    assert knn_accuracy(train, mapping[train_labels], test, mapping[test_labels]) == knn_accuracy(
        train, train_labels, test, test_labels
    )


def test_complete_collapse_scores_at_the_majority_class_rate():
    # All features identical: every neighbour is equally similar, votes follow the label counts.
    train = torch.ones(100, 4)
    labels = torch.tensor([0] * 70 + [1] * 30)
    result = knn_accuracy(train, labels, torch.ones(20, 4), torch.tensor([0] * 10 + [1] * 10))
    assert result["knn_top1"] == 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_match_cpu_scores():
    train, train_labels = make_blobs(200, 10, 64, spread=0.6, seed=11)
    test, _ = make_blobs(50, 10, 64, spread=0.6, seed=12)
    cpu = knn_scores(train, train_labels, test, k=20, dtype=torch.float64)
    gpu = knn_scores(train, train_labels, test, k=20, dtype=torch.float64, device="cuda")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=0)
