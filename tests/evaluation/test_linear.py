"""Linear probe: separable data, scikit-learn agreement on digits, determinism, collapse, warnings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collapselab.data import get_dataset
from collapselab.evaluation import ConvergenceWarning, fit_linear_probe, linear_probe


@pytest.fixture(scope="module")
def digits_pixels():
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")

    def flat(images):
        return images.reshape(len(images), -1).double() / 255

    return flat(train.images), train.labels, flat(test.images), test.labels


def _separable(n, dim, n_classes, margin, seed):
    """Labels = argmax of a fixed linear map; points within ``margin`` of a boundary dropped."""
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(dim, n_classes, generator=g, dtype=torch.float64)
    g.manual_seed(seed)
    x = torch.randn(4 * n, dim, generator=g, dtype=torch.float64) * torch.linspace(
        0.5, 3, dim, dtype=torch.float64
    )
    logits = x @ truth
    top2 = logits.topk(2, dim=1).values
    keep = (top2[:, 0] - top2[:, 1]) > margin
    return x[keep][:n], logits.argmax(dim=1)[keep][:n]


def test_probe_reaches_99_percent_on_linearly_separable_data():
    train, train_labels = _separable(1000, 20, 4, margin=0.5, seed=1)
    test, test_labels = _separable(500, 20, 4, margin=0.5, seed=2)
    result = linear_probe(train, train_labels, test, test_labels)
    assert result["linear_top1"] >= 0.99
    assert result["linear_train_top1"] >= 0.99


@pytest.fixture(scope="module")
def sklearn_digits(digits_pixels):
    """scikit-learn's LogisticRegression (defaults: C = 1, lbfgs) on standardised digits pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xte, _ = digits_pixels
    scaler = StandardScaler().fit(xtr.numpy())
    model = LogisticRegression(max_iter=5000).fit(scaler.transform(xtr.numpy()), ytr.numpy())
    return torch.from_numpy(model.predict(scaler.transform(xte.numpy())))


def test_probe_is_within_one_point_of_sklearn_logistic_regression_on_digits_pixels(
    digits_pixels, sklearn_digits
):
    xtr, ytr, xte, yte = digits_pixels
    sklearn_top1 = float((sklearn_digits == yte).double().mean())
    assert abs(linear_probe(xtr, ytr, xte, yte)["linear_top1"] - sklearn_top1) <= 0.01


def test_probe_with_sklearn_objective_predicts_what_sklearn_predicts(digits_pixels, sklearn_digits):
    # scikit-learn minimises C·Σ CE + ½‖W‖²; with λ = 1/(C·N) it is our objective times C·N.
    xtr, ytr, xte, _ = digits_pixels
    ours = fit_linear_probe(xtr, ytr, l2=1.0 / len(xtr)).predict(xte)
    assert float((ours == sklearn_digits).double().mean()) >= 0.99


@pytest.mark.slow
def test_probe_matches_sklearn_logits_on_the_same_objective(digits_pixels):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, _, _ = digits_pixels
    x = StandardScaler().fit_transform(xtr.numpy())
    reference = LogisticRegression(C=0.1, tol=1e-8, max_iter=5000).fit(x, ytr.numpy())
    probe = fit_linear_probe(xtr, ytr, l2=10.0 / len(xtr), tolerance=1e-7)
    # Softmax parameters are defined up to a shift shared by all classes: compare centred logits.
    ours = probe.logits(xtr).numpy()
    theirs = reference.decision_function(x)
    ours, theirs = (
        ours - ours.mean(axis=1, keepdims=True),
        theirs - theirs.mean(axis=1, keepdims=True),
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max())


def test_probe_is_deterministic_bit_for_bit(digits_pixels):
    xtr, ytr, _, _ = digits_pixels
    first = fit_linear_probe(xtr, ytr)
    second = fit_linear_probe(xtr, ytr)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert first.converged


def test_l2_grid_picks_one_candidate_reproducibly_on_a_seeded_split(digits_pixels):
    xtr, ytr, _, _ = digits_pixels
    grid = [1e-3, 1e-2, 1.0]
    probe = fit_linear_probe(xtr, ytr, l2=grid, seed=3)
    assert probe.l2 in grid
    assert fit_linear_probe(xtr, ytr, l2=grid, seed=3).l2 == probe.l2
    # λ = 1 underfits 64-pixel digits badly; the validation split must not choose it.
    assert probe.l2 != 1.0


def test_collapsed_constant_features_give_the_majority_class_without_nan():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    features = torch.full((100, 8), 3.0)
    result = linear_probe(
        features, labels, torch.full((20, 8), 3.0), torch.zeros(20, dtype=torch.int64)
    )
    assert result == {"linear_top1": 1.0, "linear_train_top1": 0.6}


def test_standardisation_makes_the_probe_invariant_to_feature_scale(digits_pixels):
    xtr, ytr, xte, yte = digits_pixels
    scale = torch.logspace(-3, 3, xtr.shape[1], dtype=torch.float64)
    assert linear_probe(xtr * scale, ytr, xte * scale, yte) == pytest.approx(
        linear_probe(xtr, ytr, xte, yte), abs=1e-9
    )


def test_separable_data_without_weight_decay_warns_that_lbfgs_did_not_converge():
    train, labels = _separable(200, 5, 2, margin=1.0, seed=4)
    with pytest.warns(ConvergenceWarning, match="max_iter=5"):
        fit_linear_probe(train, labels, l2=0.0, max_iter=5)


def test_a_class_only_in_the_test_split_is_never_predicted_and_counts_as_wrong(
    digits_pixels,
):
    import warnings

    xtr, ytr, xte, yte = digits_pixels
    keep = ytr != 9  # class 9 appears in the test split only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = linear_probe(xtr[keep], ytr[keep], xte, yte)
    share_of_nines = float((yte == 9).double().mean())
    assert result["linear_top1"] <= 1 - share_of_nines
    assert result["linear_top1"] > 0.8
