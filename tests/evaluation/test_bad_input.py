"""Bad input fails early with a message that says what was wrong and how to fix it."""

from __future__ import annotations

import errno
import json
import math
import os

import numpy as np
import pytest
import torch

from collapselab import runs
from collapselab._validation import InputError
from collapselab.evaluation import (
    FeatureSplits,
    api,
    code_clustering,
    evaluate,
    fit_linear_probe,
    hungarian_accuracy,
    kmeans_clustering,
    knn_accuracy,
    linear_probe,
)
from collapselab.evaluation.api import (
    CheckpointSource,
    SummaryNotWrittenWarning,
    load_checkpoint_source,
)

from .conftest import make_blobs

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


# ---- text labels, settings checked up front, features files, a summary that cannot be written


def _features(train_labels=LABELS, test_labels=TEST_LABELS) -> dict:
    return {"train_features": TRAIN, "train_labels": train_labels,
            "test_features": TEST, "test_labels": test_labels}


NAMES = np.array(["cat", "dog"])


def test_text_labels_score_as_their_integer_classes():
    fast = dict(baselines=(), n_init=1, k=5)
    as_ints = evaluate(_features(), **fast)
    as_text = evaluate(_features(NAMES[LABELS.numpy()], NAMES[TEST_LABELS.numpy()]), **fast)
    as_objects = evaluate(
        _features(list(NAMES[LABELS.numpy()]), NAMES[TEST_LABELS.numpy()].astype(object)), **fast
    )
    assert as_text == as_ints == as_objects
    digits = evaluate(_features(LABELS.numpy().astype(str), TEST_LABELS.numpy().astype(str)), **fast)
    assert digits == as_ints


def test_text_labels_share_one_mapping_over_train_and_test():
    # The test split holds only "dog" (index 1 over both splits; index 0 if mapped on its own).
    features, labels = make_blobs(20, 2, 4, spread=0.05, seed=0)
    test, test_labels = make_blobs(10, 2, 4, spread=0.05, seed=1)
    dogs = test_labels == 1
    expected = knn_accuracy(features, labels, test[dogs], test_labels[dogs], k=5)
    named = knn_accuracy(features, NAMES[labels.numpy()], test[dogs], NAMES[test_labels[dogs].numpy()], k=5)
    assert named == expected and named["knn_top1"] == 1.0
    probe = linear_probe(features, NAMES[labels.numpy()], test[dogs], NAMES[test_labels[dogs].numpy()])
    assert probe["linear_top1"] == 1.0
    assert kmeans_clustering(test, NAMES[test_labels.numpy()], n_init=1)["acc"] == 1.0


def test_text_and_number_labels_mixed_or_fractional_are_input_errors():
    with pytest.raises(InputError, match=r"train_labels hold text .* but test_labels hold numbers"):
        evaluate(_features(NAMES[LABELS.numpy()], TEST_LABELS), baselines=())
    with pytest.raises(InputError, match="fractional"):
        evaluate(_features(LABELS + 0.5), baselines=())
    with pytest.raises(InputError, match="train_features: expected real numbers, got text"):
        knn_accuracy(TRAIN.numpy().astype(str), LABELS, TEST, TEST_LABELS)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (dict(n_init=0), "n_init must be a positive whole number"),
        (dict(n_init=-3), "n_init must be a positive whole number"),
        (dict(seed=-1), r"seed must be a whole number in \[0, 4294967295\]"),
        (dict(seed=2**32), r"seed must be a whole number in \[0, 4294967295\]"),
        (dict(seed=1.5), "seed must be a whole number"),
        (dict(k=0), "k must be a positive whole number"),
        (dict(k=2.5), "k must be a positive whole number"),
        (dict(temperature=math.inf), "temperature must be > 0 and finite"),
        (dict(temperature=math.nan), "temperature must be > 0 and finite"),
        (dict(temperature=0.0), "temperature must be > 0 and finite"),
        (dict(l2=math.nan), "l2 must be >= 0 and finite"),
        (dict(l2=math.inf), "l2 must be >= 0 and finite"),
        (dict(l2=[1e-4, math.nan]), "l2 must be >= 0 and finite"),
        (dict(l2=[]), "l2 must be >= 0 and finite"),
        (dict(batch_size=0), "batch_size must be a positive whole number"),
    ],
)
def test_bad_settings_are_one_line_input_errors_before_any_work(setting, message, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("a protocol ran before the settings were checked")

    monkeypatch.setattr(api, "run_protocols", no_work)
    with pytest.raises(InputError, match=message) as caught:
        evaluate(_features(), **setting)
    assert "\n" not in str(caught.value)


def test_bad_settings_are_input_errors_in_the_protocol_functions_too():
    with pytest.raises(InputError, match="n_init must be a positive whole number"):
        kmeans_clustering(TEST, TEST_LABELS, n_init=0)
    with pytest.raises(InputError, match=r"seed must be a whole number in \[0, "):
        kmeans_clustering(TEST, TEST_LABELS, seed=-1)
    with pytest.raises(InputError, match="temperature must be > 0 and finite"):
        knn_accuracy(TRAIN, LABELS, TEST, TEST_LABELS, temperature=math.inf)
    with pytest.raises(InputError, match="l2 must be >= 0 and finite"):
        linear_probe(TRAIN, LABELS, TEST, TEST_LABELS, l2=math.nan)


def test_a_negative_seed_still_seeds_the_protocols_without_k_means():
    # torch takes negative seeds (a run trained with train.seed=-1 scores its kNN at the end).
    fast = dict(protocols=("knn", "linear"), baselines=(), k=5)
    assert evaluate(_features(), seed=-1, **fast).keys() == evaluate(_features(), **fast).keys()


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_a_features_file_given_as_a_run_is_read_as_features(tmp_path, suffix):
    path = tmp_path / f"features{suffix}"
    if suffix == ".npz":
        FeatureSplits(TRAIN, LABELS, TEST, TEST_LABELS).save(path)
    else:
        torch.save(_features(), path)
    fast = dict(protocols=("knn",), baselines=(), k=5)
    assert evaluate(str(path), **fast) == evaluate(_features(), **fast)
    with pytest.raises(InputError, match=r"this is a features file .* --features"):
        load_checkpoint_source(path)


def _tiny_run(tmp_path) -> CheckpointSource:
    """A run folder's source without training: a linear backbone on digits, scores to tmp_path/run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text('{"method": "byol"}\n')
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    return CheckpointSource(model=model, dataset="digits", run_dir=run_dir,
                            cache=run_dir / "features.npz", step=3)


FAST_RUN = dict(protocols=("knn",), baselines=(), k=5)


def test_scores_that_cannot_be_merged_into_the_summary_are_returned_with_a_warning(
    tmp_path, monkeypatch
):
    source = _tiny_run(tmp_path)

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(runs, "write_atomic", denied)
    monkeypatch.setattr(FeatureSplits, "save", lambda self, path, **extra: denied(path))
    with pytest.warns(SummaryNotWrittenWarning, match=r"summary\.json \(Permission denied\)"):
        with pytest.warns(UserWarning, match=r"feature cache .* not written"):
            results = evaluate(source, **FAST_RUN)
    assert 0.0 < results["knn_top1"] <= 1.0
    assert json.loads((source.run_dir / "summary.json").read_text()) == {"method": "byol"}


def test_a_read_only_run_folder_keeps_the_scores(tmp_path):
    source = _tiny_run(tmp_path)
    source.run_dir.chmod(0o555)
    (source.run_dir / "summary.json").chmod(0o444)
    try:
        if os.access(source.run_dir, os.W_OK):
            pytest.skip("running as root: chmod does not make the folder read-only")
        with pytest.warns(SummaryNotWrittenWarning, match="could not be merged"):
            results = evaluate(source, **FAST_RUN)
        assert 0.0 < results["knn_top1"] <= 1.0
    finally:
        source.run_dir.chmod(0o755)
