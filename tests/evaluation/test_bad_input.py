"""Bad input fails early with a message that says what was wrong and how to fix it."""

from __future__ import annotations

import pytest
import torch

from collapselab._validation import InputError
from collapselab.evaluation import (
    code_clustering,
    evaluate,
    fit_linear_probe,
    hungarian_accuracy,
    kmeans_clustering,
    knn_accuracy,
    linear_probe,
)

TRAIN = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(2).repeat(10)
TEST = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
TEST_LABELS = torch.arange(2).repeat(5)
PAIR_PROTOCOLS = [knn_accuracy, linear_probe]


@pytest.mark.parametrize("protocol", PAIR_PROTOCOLS)
def test_feature_label_count_mismatch_names_both_counts(protocol):
    with pytest.raises(
        InputError, match=r"train_labels has 19 entries but train_features has 20 rows"
    ):
        protocol(TRAIN, LABELS[:19], TEST, TEST_LABELS)
    with pytest.raises(
        InputError, match=r"test_labels has 11 entries but test_features has 10 rows"
    ):
        protocol(TRAIN, LABELS, TEST, torch.zeros(11, dtype=torch.int64))


def test_clustering_count_mismatch_is_an_input_error():
    with pytest.raises(InputError, match="labels has 9 entries but features has 10 rows"):
        kmeans_clustering(TEST, TEST_LABELS[:9])
    with pytest.raises(InputError, match="labels_true has 3 entries but labels_pred has 2"):
        hungarian_accuracy([0, 1, 1], [0, 1])


@pytest.mark.parametrize("protocol", PAIR_PROTOCOLS)
def test_single_class_is_rejected_with_the_class_named(protocol):
    with pytest.raises(InputError, match=r"single class \(3\).*at least 2 classes"):
        protocol(TRAIN, torch.full((20,), 3), TEST, TEST_LABELS)


def test_single_class_is_rejected_by_clustering_and_probe_fit():
    with pytest.raises(InputError, match="single class"):
        kmeans_clustering(TEST, torch.zeros(10, dtype=torch.int64))
    with pytest.raises(InputError, match="single class"):
        fit_linear_probe(TRAIN, torch.zeros(20, dtype=torch.int64))


@pytest.mark.parametrize("protocol", PAIR_PROTOCOLS)
def test_nan_features_are_counted_and_located(protocol):
    bad = TRAIN.clone()
    bad[2, 1] = float("nan")
    bad[5, 0] = float("inf")
    with pytest.raises(
        InputError, match=r"train_features has 2 non-finite value\(s\) \(1 NaN, 1 Inf\).*\(2, 1\)"
    ):
        protocol(bad, LABELS, TEST, TEST_LABELS)


def test_nan_in_test_features_or_codes_is_rejected():
    bad = TEST.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(InputError, match=r"test_features has 1 non-finite.*\(7, 3\)"):
        knn_accuracy(TRAIN, LABELS, bad, TEST_LABELS)
    with pytest.raises(InputError, match="codes has 1 non-finite"):
        code_clustering(bad, TEST_LABELS)


def test_dimension_mismatch_between_splits_is_an_input_error():
    with pytest.raises(
        InputError, match="train_features have 4 dimensions but test_features have 3"
    ):
        knn_accuracy(TRAIN, LABELS, TEST[:, :3], TEST_LABELS)


def test_wrong_rank_and_fractional_labels_are_input_errors():
    with pytest.raises(InputError, match=r"shape \(N, D\).*reshape"):
        knn_accuracy(TRAIN.reshape(20, 2, 2), LABELS, TEST, TEST_LABELS)
    with pytest.raises(InputError, match="fractional"):
        linear_probe(TRAIN, LABELS + 0.5, TEST, TEST_LABELS)


def test_bad_parameters_are_input_errors():
    with pytest.raises(InputError, match="k must be a positive"):
        knn_accuracy(TRAIN, LABELS, TEST, TEST_LABELS, k=0)
    with pytest.raises(InputError, match="temperature must be > 0"):
        knn_accuracy(TRAIN, LABELS, TEST, TEST_LABELS, temperature=0)
    with pytest.raises(InputError, match="l2 must be >= 0"):
        linear_probe(TRAIN, LABELS, TEST, TEST_LABELS, l2=-1.0)


def test_unknown_protocol_suggests_the_closest_name():
    features = {
        "train_features": TRAIN,
        "train_labels": LABELS,
        "test_features": TEST,
        "test_labels": TEST_LABELS,
    }
    with pytest.raises(InputError, match="unknown protocol 'knnn'; did you mean 'knn'"):
        evaluate(features, None, protocols=["knnn"])


def test_features_dict_with_a_missing_key_names_it():
    with pytest.raises(InputError, match="missing test_labels"):
        evaluate({"train_features": TRAIN, "train_labels": LABELS, "test_features": TEST}, None)


def test_features_from_another_dataset_are_refused_with_the_fix():
    features = {
        "train_features": TRAIN,
        "train_labels": LABELS,
        "test_features": TEST,
        "test_labels": TEST_LABELS,
    }
    with pytest.raises(InputError, match=r"do not match dataset 'digits'.*Python: dataset=None"):
        evaluate(features, "digits")


def test_a_missing_checkpoint_path_is_named(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(InputError, match=r"no_such_run: no such run folder or checkpoint file"):
        evaluate(missing)
    with pytest.raises(InputError, match=r"last\.pt: no such run folder or checkpoint file"):
        evaluate(str(tmp_path / "last.pt"))
