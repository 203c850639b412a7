"""Bad inputs to diagnose / CollapseMonitor: one-line InputErrors, never a silently wrong verdict."""

from __future__ import annotations

import pytest
import torch

import collapselab as cl
from collapselab._validation import InputError
from collapselab.diagnostics.monitor import CollapseMonitor


def _z(n: int = 64, d: int = 16) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_misspelled_reference_metric_is_an_error_naming_the_near_miss():
    with pytest.raises(InputError, match="unknown metric 'efective_rank'; did you mean 'effective_rank'") as err:
        cl.diagnose(_z(), reference={"efective_rank": 15})
    _one_line(err)


def test_a_non_numeric_reference_value_is_a_one_line_error():
    with pytest.raises(InputError, match="'effective_rank' must be a number, got 'abc'") as err:
        cl.diagnose(_z(), reference={"effective_rank": "abc"})
    _one_line(err)


def test_a_correct_reference_mapping_still_works_and_metric_names_cover_diagnose():
    from collapselab.diagnostics.verdict import METRIC_NAMES

    z = _z()
    full = cl.diagnose(z, views=z + 0.1, codes=torch.softmax(z[:, :5], 1), labels=torch.arange(64) % 4,
                       band=torch.rand(64) + 0.1, reference=z)
    assert set(full.metrics) <= METRIC_NAMES
    again = cl.diagnose(z, reference=dict(full.metrics))
    assert again.metrics["effective_rank_vs_reference"] == pytest.approx(1.0)


@pytest.mark.parametrize("value", [0, 1, -3, 2.5, "9"])
def test_max_pairwise_samples_must_be_at_least_two(value):
    with pytest.raises(InputError, match="max_pairwise_samples: must be an integer >= 2") as err:
        cl.diagnose(_z(), max_pairwise_samples=value)
    _one_line(err)
    with pytest.raises(InputError, match="max_pairwise_samples must be an integer >= 2"):
        CollapseMonitor(max_pairwise_samples=value)


def test_monitor_update_with_a_tensor_says_to_pass_a_mapping():
    with pytest.raises(InputError, match=r'mapping .*like \{"emb": z\}; got Tensor') as err:
        CollapseMonitor().update(0, _z())
    _one_line(err)


def test_monitor_every_and_step_must_be_integers():
    with pytest.raises(InputError, match="every must be an integer >= 1, got 'x'"):
        CollapseMonitor(every="x")
    with pytest.raises(InputError, match="step must be an integer"):
        CollapseMonitor().update("x", {"emb": _z()})
    monitor = CollapseMonitor()
    monitor.update(0, {"emb": _z()})
    monitor.update(1, {"emb": _z()})  # its own reference is not checked as a user's mapping
    assert monitor.latest["emb"].verdict["dimensional"] == "healthy"


def test_one_sample_per_cluster_is_not_intracluster_collapse():
    d = cl.diagnose(_z(), labels=torch.arange(64))
    assert d.verdict["intracluster"] == "n/a"
    assert "single sample" in d.reasons["intracluster"]
    assert d.metrics["intracluster_singletons"] == 64


def test_singleton_clusters_are_left_out_of_the_intracluster_ratio():
    z, labels = _z(), torch.arange(64) % 4
    with_singles = labels.clone()
    with_singles[:4] = torch.arange(100, 104)  # four rows alone in their cluster
    a = cl.diagnose(z[4:], labels=labels[4:])
    b = cl.diagnose(z, labels=with_singles)
    assert b.metrics["intracluster_ratio"] == pytest.approx(a.metrics["intracluster_ratio"], rel=1e-12)
    assert b.metrics["n_clusters"] == 4 and b.metrics["intracluster_singletons"] == 4
    assert "4 single-sample clusters left out" in b.reasons["intracluster"]
