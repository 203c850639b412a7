"""diagnose(): verdicts on constructed cases for every mode and level, and the Diagnosis API."""

from __future__ import annotations

import json
import math

import pytest
import torch

from collapselab import Diagnosis, diagnose
from collapselab.diagnostics import verdict as vd
from collapselab.diagnostics.demo import demo_sets


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_isotropic_gaussian_is_healthy_in_every_measurable_mode() -> None:
    d = diagnose(torch.randn(2000, 32, generator=_gen()))
    assert d.verdict == {"complete": "healthy", "dimensional": "healthy", "cluster": "n/a", "intracluster": "n/a"}
    assert d.worst == "healthy" and not d.collapsed


def test_constant_embeddings_are_completely_collapsed() -> None:
    d = diagnose(torch.full((100, 16), 2.5))
    assert d.verdict["complete"] == "collapsed"
    assert d.verdict["dimensional"] == "collapsed"
    assert d.metrics["spread"] == 0.0 and d.metrics["uniformity"] == pytest.approx(0.0)


def test_embeddings_on_one_ray_are_completely_collapsed_in_direction() -> None:
    norms = torch.rand(500, 1, generator=_gen()) + 0.5
    z = norms * torch.randn(1, 64, generator=_gen(1))
    d = diagnose(z)
    assert d.metrics["relative_variance"] > 0.01  # the norms vary ...
    assert d.verdict["complete"] == "collapsed"  # ... but every embedding points the same way


def test_small_spread_is_a_warning_without_reference_and_collapse_relative_to_it() -> None:
    g = _gen(2)
    centre = torch.randn(1, 64, generator=g)
    start = centre + 0.3 * torch.randn(500, 64, generator=g)
    end = centre + 3e-3 * torch.randn(500, 64, generator=g)  # spread ~1e-5
    assert diagnose(start).verdict["complete"] == "healthy"
    assert diagnose(end).verdict["complete"] == "warning"
    assert diagnose(end, reference=diagnose(start)).verdict["complete"] == "collapsed"
    assert diagnose(start, reference=diagnose(start)).verdict["complete"] == "healthy"


def test_shrinking_embedding_is_caught_only_by_absolute_spread() -> None:
    z = torch.randn(500, 16, generator=_gen(3))
    tiny = 1e-3 * z  # same shape of the cloud, tr(cov) 1e-6 x smaller
    snapshot = diagnose(tiny)
    assert snapshot.metrics["effective_rank"] == pytest.approx(diagnose(z).metrics["effective_rank"])
    assert snapshot.verdict["complete"] == "healthy"  # scale-invariant measures cannot see it
    relative = diagnose(tiny, reference=diagnose(z))
    assert relative.metrics["total_variance_vs_reference"] == pytest.approx(1e-6, rel=1e-6)
    assert relative.verdict["complete"] == "collapsed"


@pytest.mark.parametrize(("rank", "expected"), [(1, "collapsed"), (2, "collapsed"), (5, "warning"), (32, "healthy")])
def test_dimensional_verdict_follows_effective_rank_fraction(rank: int, expected: str) -> None:
    g = _gen(4)
    basis = torch.linalg.qr(torch.randn(128, rank, generator=g))[0]
    z = torch.randn(3000, rank, generator=g) @ basis.T
    # erank/128: 1 -> 0.008, 2 -> 0.016 (< 2 %), 5 -> 0.039 (< 5 %), 32 -> 0.25
    assert diagnose(z).verdict["dimensional"] == expected


def test_dimensional_verdict_relative_to_reference() -> None:
    g = _gen(5)
    full = torch.randn(2000, 40, generator=g)
    reference = diagnose(full)
    for rank, expected in ((40, "healthy"), (10, "healthy"), (5, "warning"), (3, "collapsed")):
        z = full.clone()
        z[:, rank:] = 0.0
        assert diagnose(z, reference=reference).verdict["dimensional"] == expected, rank


def test_two_unit_bottleneck_is_not_dimensional_collapse() -> None:
    z = torch.randn(500, 2, generator=_gen(6))
    assert diagnose(z).verdict["dimensional"] == "healthy"
    assert diagnose(torch.randn(50, 1, generator=_gen(7))).verdict["dimensional"] == "n/a"


def test_cluster_verdict_from_code_usage() -> None:
    z = torch.randn(300, 8, generator=_gen(8))
    spread = torch.arange(300) % 10
    few = torch.where(torch.arange(300) < 290, 0, 1)
    some = torch.arange(300) % 2
    assert diagnose(z, codes=spread).verdict["cluster"] == "healthy"
    assert diagnose(z, codes=torch.nn.functional.one_hot(few, 10).double()).verdict["cluster"] == "collapsed"
    assert diagnose(z, codes=torch.nn.functional.one_hot(some, 10).double()).verdict["cluster"] == "warning"
    uniform = torch.full((300, 10), 0.1, dtype=torch.float64)
    assert diagnose(z, codes=uniform).verdict["cluster"] == "collapsed"
    assert diagnose(z).verdict["cluster"] == "n/a"


def test_codes_define_clusters_for_intracluster_when_no_labels() -> None:
    g = _gen(9)
    labels = torch.arange(200) % 4
    z = 5 * torch.randn(4, 16, generator=g)[labels] + 1e-4 * torch.randn(200, 16, generator=g)
    d = diagnose(z, codes=labels)
    assert d.verdict["intracluster"] == "collapsed"
    assert d.metrics["n_clusters"] == 4


def test_alignment_reported_when_views_given() -> None:
    z = torch.randn(100, 8, generator=_gen(10))
    assert diagnose(z, views=z).metrics["alignment"] == pytest.approx(0.0, abs=1e-12)
    assert "alignment" not in diagnose(z).metrics


def test_uniformity_subsample_is_seeded_and_exact_when_small() -> None:
    from collapselab.diagnostics import uniformity

    z = torch.randn(300, 8, generator=_gen(11))
    assert diagnose(z).metrics["uniformity"] == pytest.approx(uniformity(z), rel=1e-12)
    a = diagnose(z, max_pairwise_samples=100, seed=1).metrics["uniformity"]
    assert a == diagnose(z, max_pairwise_samples=100, seed=1).metrics["uniformity"]


def test_diagnosis_to_dict_is_json_able_and_str_is_a_table() -> None:
    d = diagnose(torch.randn(50, 4, generator=_gen(12)), codes=torch.arange(50) % 3)
    payload = json.loads(json.dumps(d.to_dict()))
    assert set(payload["verdict"]) == {"complete", "dimensional", "cluster", "intracluster"}
    assert all(v is None or isinstance(v, float) for v in payload["metrics"].values())
    text = str(d)
    for mode in vd.MODES:
        assert mode in text
    assert "effective_rank" in text and "50 samples x 4 dims" in text


def test_nan_metrics_become_null_in_json() -> None:
    d = Diagnosis(metrics={"n_samples": 2.0, "dim": 1.0, "alpha_req": math.nan}, verdict={}, reasons={})
    assert d.to_dict()["metrics"]["alpha_req"] is None


def test_demo_sets_get_the_verdict_they_illustrate() -> None:
    results = {name: diagnose(s["z"], codes=s["codes"], labels=s["labels"]) for name, s in demo_sets().items()}
    assert results["healthy"].worst == "healthy"
    assert results["complete"].verdict["complete"] == "collapsed"
    assert results["dimensional"].verdict["dimensional"] == "collapsed"
    assert results["dimensional"].verdict["complete"] == "healthy"
    assert results["cluster"].verdict["cluster"] == "collapsed"
    assert results["cluster"].verdict["complete"] == "healthy"
