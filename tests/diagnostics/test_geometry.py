"""Geometric measurements against naive loops and closed forms (Wang & Isola 2020; SimSiam)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from collapselab import diagnostics as dg


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_alignment_equals_naive_mean_of_powered_distances() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 7)), rng.normal(size=(40, 7))
    ua, ub = _unit(a), _unit(b)
    for alpha in (1.0, 2.0, 3.5):
        naive = np.mean([np.linalg.norm(ua[i] - ub[i]) ** alpha for i in range(40)])
        assert dg.alignment(a, b, alpha=alpha) == pytest.approx(naive, rel=1e-12)
    assert dg.alignment(a, 3.0 * a) == pytest.approx(0.0, abs=1e-15)


def test_uniformity_equals_naive_pair_loop() -> None:
    x = np.random.default_rng(1).normal(size=(30, 5))
    u = _unit(x)
    for t in (0.5, 2.0):
        vals = [math.exp(-t * np.sum((u[i] - u[j]) ** 2)) for i, j in itertools.combinations(range(30), 2)]
        assert dg.uniformity(x, t=t) == pytest.approx(math.log(np.mean(vals)), rel=1e-12)


def test_uniformity_chunked_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(70, 6, generator=torch.Generator().manual_seed(2))
    whole = dg.uniformity(x)
    monkeypatch.setattr(dg.geometry, "PAIRWISE_CHUNK", 16)
    assert dg.uniformity(x) == pytest.approx(whole, rel=1e-12)


def test_uniformity_is_zero_at_complete_collapse_and_bounded_below() -> None:
    z = torch.ones(20, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert dg.uniformity(z) == pytest.approx(0.0, abs=1e-12)
    n, t = 50, 2.0
    x = torch.randn(n, 64, generator=torch.Generator().manual_seed(3))
    assert dg.uniformity(x, t=t) >= -2 * t * n / (n - 1) - 1e-12
    assert dg.uniformity(x, t=t) < -3.0  # nearly orthogonal points in 64 dims


def test_mean_pairwise_cosine_equals_naive_loop() -> None:
    x = np.random.default_rng(4).normal(size=(25, 6)) + 0.5
    u = _unit(x)
    naive = np.mean([u[i] @ u[j] for i in range(25) for j in range(25) if i != j])
    assert dg.mean_pairwise_cosine(x) == pytest.approx(naive, rel=1e-12)
    assert dg.mean_pairwise_cosine(np.tile([[1.0, 2.0]], (10, 1))) == pytest.approx(1.0)


def test_normalized_std_near_inverse_sqrt_d_for_isotropic_data() -> None:
    d = 64
    z = torch.randn(20_000, d, generator=torch.Generator().manual_seed(5))
    assert dg.normalized_std(z) == pytest.approx(1 / math.sqrt(d), rel=0.02)
    assert dg.collapse_level(z) == pytest.approx(0.0, abs=0.02)
    assert dg.normalized_std(torch.ones(10, d)) == 0.0
    assert dg.collapse_level(torch.ones(10, d)) == 1.0


def test_normalized_std_matches_unbiased_std_of_normalised_rows() -> None:
    x = np.random.default_rng(6).normal(size=(30, 9))
    assert dg.normalized_std(x) == pytest.approx(np.std(_unit(x), axis=0, ddof=1).mean(), rel=1e-12)


def test_relative_variance_ignores_offset_direction_but_sees_spread() -> None:
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(1000, 16, generator=g, dtype=torch.float64)
    offset = torch.full((1, 16), 10.0, dtype=torch.float64)
    # trace(cov) / E|z|^2 = 16 s^2 / (16 s^2 + 1600) for spread s
    expected = 16 * noise.var(dim=0, unbiased=False).mean() / (noise + offset).pow(2).sum(dim=1).mean()
    assert dg.relative_variance(noise + offset) == pytest.approx(float(expected), rel=1e-12)
    assert dg.relative_variance(noise - noise.mean(0)) == pytest.approx(1.0)
    assert dg.relative_variance(offset.expand(50, 16)) == 0.0


def test_directional_variance_zero_on_a_ray_and_near_one_when_isotropic() -> None:
    ray = torch.linspace(1, 5, 30)[:, None] * torch.tensor([[3.0, -1.0, 2.0]])
    assert dg.directional_variance(ray) == pytest.approx(0.0, abs=1e-12)
    assert dg.relative_variance(ray) > 0.05  # the norms still vary
    z = torch.randn(5000, 32, generator=torch.Generator().manual_seed(8))
    assert dg.directional_variance(z) == pytest.approx(1.0, abs=0.01)


def test_total_variance_is_trace_of_covariance() -> None:
    z = torch.randn(100, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 3
    assert dg.total_variance(z) == pytest.approx(float(torch.trace(dg.covariance(z))), rel=1e-12)


def test_point_statistics_equal_the_individual_functions() -> None:
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(10), dtype=torch.float64) + 1.5
    x[5] = 0.0  # a zero row has no direction
    stats, u = dg.geometry.point_statistics(x)
    individual = {
        "total_variance": dg.total_variance(x),
        "relative_variance": dg.relative_variance(x),
        "directional_variance": dg.directional_variance(x),
        "normalized_std": dg.normalized_std(x),
        "collapse_level": dg.collapse_level(x),
        "mean_pairwise_cosine": dg.mean_pairwise_cosine(x),
    }
    for key, value in individual.items():
        assert stats[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert dg.geometry.uniformity_of_unit_rows(u) == pytest.approx(dg.uniformity(x), rel=1e-12)
