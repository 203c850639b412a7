"""Code usage and intracluster spread against hand cases and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collapselab import diagnostics as dg
from collapselab._validation import InputError


@pytest.mark.parametrize("k", [1, 3, 7])
def test_one_hot_assignments_to_k_of_c_codes_give_perplexity_k(k: int) -> None:
    c, per_code = 16, 5
    assign = torch.arange(k).repeat_interleave(per_code)
    usage = dg.code_usage(assign, n_codes=c)
    assert usage["code_perplexity"] == pytest.approx(k)
    assert usage["code_entropy"] == pytest.approx(math.log(k))
    assert usage["code_used_fraction"] == pytest.approx(k / c)
    probs = torch.nn.functional.one_hot(assign, c).double()
    assert dg.code_usage(probs)["code_perplexity"] == pytest.approx(k)
    assert dg.code_usage(probs)["code_sample_entropy_ratio"] == pytest.approx(0.0, abs=1e-12)


def test_code_usage_entropy_matches_scipy_on_unbalanced_histogram() -> None:
    from scipy.stats import entropy

    assign = np.array([0] * 6 + [1] * 3 + [4] * 1)
    usage = dg.code_usage(assign, n_codes=5)
    assert usage["code_entropy"] == pytest.approx(entropy([6, 3, 1]))
    assert usage["code_used"] == 3


def test_uniform_code_probabilities_flag_uninformative_codes() -> None:
    probs = torch.full((40, 8), 1 / 8, dtype=torch.float64)
    usage = dg.code_usage(probs)
    assert usage["code_sample_entropy_ratio"] == pytest.approx(1.0)
    assert usage["code_soft_perplexity"] == pytest.approx(8.0)


def test_code_usage_rejects_bad_codes() -> None:
    with pytest.raises(InputError, match="probabilities"):
        dg.code_usage(torch.randn(10, 4))
    with pytest.raises(InputError, match="out of range"):
        dg.code_usage(torch.tensor([0, 5]), n_codes=3)
    with pytest.raises(InputError, match=">= 0"):
        dg.code_usage(torch.tensor([0, -1]))
    with pytest.raises(InputError, match="integer"):
        dg.code_usage(np.array([0.5, 1.0]))


def test_intracluster_ratio_equals_one_minus_explained_variance() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    centres = rng.normal(scale=5.0, size=(4, 3))
    z = centres[labels] + rng.normal(scale=0.5, size=(100, 3))
    within = sum(((z[labels == k] - z[labels == k].mean(0)) ** 2).sum() for k in range(4))
    total = ((z - z.mean(0)) ** 2).sum()
    out = dg.intracluster_spread(z, labels)
    assert out["intracluster_ratio"] == pytest.approx(within / total, rel=1e-12)
    per = [((z[labels == k] - z[labels == k].mean(0)) ** 2).sum(1).mean() / (total / 100) for k in range(4)]
    assert out["intracluster_min_ratio"] == pytest.approx(min(per), rel=1e-12)
    assert out["n_clusters"] == 4


def test_tight_clusters_flag_intracluster_collapse() -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(10).repeat_interleave(30)
    centres = torch.randn(10, 32, generator=g) * 3
    tight = centres[labels] + 1e-3 * torch.randn(300, 32, generator=g)
    loose = centres[labels] + 3.0 * torch.randn(300, 32, generator=g)
    assert dg.intracluster_spread(tight, labels)["intracluster_ratio"] < 1e-5
    assert dg.diagnose(tight, labels=labels).verdict["intracluster"] == "collapsed"
    assert dg.diagnose(loose, labels=labels).verdict["intracluster"] == "healthy"


@pytest.mark.parametrize(
    ("members", "scale", "expected"),
    [
        (30, 1e-4, "warning"),  # one cluster of 30 shrunk to a point among healthy clusters
        (30, 0.3, "healthy"),  # tight (~0.007 of the total spread) but not a point
        (3, 0.0, "healthy"),  # three identical inputs: too few to call a cluster collapsed
    ],
)
def test_a_single_cluster_shrunk_to_a_point_warns_only_when_it_has_members_enough(
    members: int, scale: float, expected: str
) -> None:
    g = torch.Generator().manual_seed(4)
    labels = torch.cat([torch.arange(10).repeat_interleave(30), torch.full((members,), 10)])
    centres = torch.randn(11, 16, generator=g) * 3
    spread = torch.full((len(labels), 1), 2.0)
    spread[labels == 10] = scale
    z = centres[labels] + spread * torch.randn(len(labels), 16, generator=g)
    out = dg.intracluster_spread(z, labels)
    assert out["intracluster_ratio"] > 0.05  # the clusters' mean is healthy
    d = dg.diagnose(z, labels=labels)
    assert d.verdict["intracluster"] == expected
    if expected == "warning":
        assert out["intracluster_min_ratio"] < 1e-3 and "one cluster is at" in d.reasons["intracluster"]
    if members < dg.clusters.MIN_CLUSTER_MEMBERS:
        assert out["intracluster_min_ratio"] > 1e-3  # the 3-member cluster is left out of the minimum


def test_intracluster_with_kmeans_finds_planted_clusters() -> None:
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(3).repeat_interleave(40)
    z = torch.randn(3, 8, generator=g)[labels] * 10 + 0.01 * torch.randn(120, 8, generator=g)
    by_kmeans = dg.intracluster_spread(z, n_clusters=3)
    by_labels = dg.intracluster_spread(z, labels)
    assert by_kmeans["intracluster_ratio"] == pytest.approx(by_labels["intracluster_ratio"], rel=1e-9)


def test_intracluster_requires_labels_or_cluster_count_and_matching_length() -> None:
    z = torch.randn(10, 3)
    with pytest.raises(InputError, match="n_clusters"):
        dg.intracluster_spread(z)
    with pytest.raises(InputError, match="labels"):
        dg.intracluster_spread(z, torch.zeros(9, dtype=torch.long))


def test_rows_labelled_minus_one_are_unlabelled_and_left_out() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 20)
    z = rng.normal(scale=5.0, size=(3, 4))[labels] + rng.normal(size=(60, 4))
    noise = rng.normal(scale=50.0, size=(30, 4))  # far-off unlabelled rows
    out = dg.intracluster_spread(np.vstack([z, noise]), np.concatenate([labels, -np.ones(30, dtype=int)]))
    assert out == pytest.approx(dg.intracluster_spread(z, labels), rel=1e-12)
    with pytest.raises(InputError, match="unlabelled"):
        dg.intracluster_spread(z, -np.ones(60, dtype=int))
    d = dg.diagnose(z, labels=-np.ones(60, dtype=int))
    assert d.verdict["intracluster"] == "n/a" and "unlabelled" in d.reasons["intracluster"]
    assert "intracluster_ratio" not in d.metrics and "intracluster_min_ratio" not in d.metrics
    single = dg.diagnose(z, labels=np.zeros(60, dtype=int))
    assert single.verdict["intracluster"] == "n/a" and "one cluster" in single.reasons["intracluster"]
