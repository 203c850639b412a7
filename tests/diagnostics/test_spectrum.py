"""Spectral measurements against closed forms, NumPy references and their defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collapselab import diagnostics as dg
from collapselab.diagnostics import spectrum


def _isotropic(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rank_k(n: int, d: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    return torch.randn(n, k, generator=g, dtype=torch.float64) @ basis.T


def test_covariance_matches_numpy_biased_covariance() -> None:
    z = _isotropic(300, 17) * torch.linspace(0.1, 3.0, 17) + 5.0
    ref = np.cov(z.numpy(), rowvar=False, bias=True)
    np.testing.assert_allclose(dg.covariance(z).numpy(), ref, rtol=1e-12, atol=1e-12)


def test_covariance_of_float32_input_is_float64_and_accepts_ndarray() -> None:
    z = np.random.default_rng(0).normal(size=(100, 80)).astype(np.float32)
    cov = dg.covariance(z)
    assert cov.dtype == torch.float64
    np.testing.assert_allclose(cov.numpy(), np.cov(z.astype(np.float64), rowvar=False, bias=True), atol=1e-12)


@pytest.mark.parametrize("shape", [(500, 20), (20, 500), (128, 128)])
def test_eigenspectrum_is_descending_and_matches_numpy(shape: tuple[int, int]) -> None:
    z = _isotropic(*shape) @ torch.diag(torch.linspace(0.2, 2.0, shape[1], dtype=torch.float64))
    lam = dg.eigenspectrum(z)
    ref = np.sort(np.clip(np.linalg.eigvalsh(np.cov(z.numpy(), rowvar=False, bias=True)), 0, None))[::-1]
    assert len(lam) == shape[1]
    assert bool((lam[:-1] >= lam[1:]).all())
    np.testing.assert_allclose(lam.numpy(), ref, atol=1e-10 * ref[0])


def test_stable_and_effective_rank_near_d_for_isotropic_gaussian() -> None:
    d = 32
    z = _isotropic(20_000, d)
    # Marchenko–Pastur: the sample spectrum spreads by ~sqrt(d/N); both ranks stay within 1 %
    assert dg.stable_rank(z) == pytest.approx(d, rel=0.01)
    assert dg.effective_rank(z) == pytest.approx(d, rel=0.01)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ranks_near_k_for_rank_k_data(k: int) -> None:
    z = _rank_k(2_000, 64, k)
    assert dg.stable_rank(z) == pytest.approx(k, rel=0.05)
    assert dg.effective_rank(z) == pytest.approx(k, rel=0.05)
    assert dg.effective_rank(z) <= k + 1e-9


def test_stable_rank_equals_trace_squared_over_frobenius_squared() -> None:
    z = _isotropic(400, 30) * torch.linspace(0.5, 4.0, 30, dtype=torch.float64)
    cov = np.cov(z.numpy(), rowvar=False, bias=True)
    expected = np.trace(cov) ** 2 / np.sum(cov**2)
    assert dg.stable_rank(z) == pytest.approx(expected, rel=1e-12)
    # the N < D Gram path gives the same number
    zt = _isotropic(30, 400)
    cov_t = np.cov(zt.numpy(), rowvar=False, bias=True)
    assert dg.stable_rank(zt) == pytest.approx(np.trace(cov_t) ** 2 / np.sum(cov_t**2), rel=1e-10)


@pytest.mark.parametrize("eps", [1e-1, 1e-3, 1e-6])
def test_stable_rank_of_diag_lambda_eps_tends_to_one(eps: float) -> None:
    d = 10
    lam = torch.tensor([1.0] + [eps] * (d - 1), dtype=torch.float64)
    cov = torch.diag(lam)
    expected = (1 + (d - 1) * eps) ** 2 / (1 + (d - 1) * eps**2)
    assert spectrum.stable_rank_from_covariance(cov) == pytest.approx(expected, rel=1e-12)
    assert spectrum.stable_rank_from_spectrum(lam) == pytest.approx(expected, rel=1e-12)
    if eps <= 1e-6:
        assert expected == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("scale", [1e-6, 1e-2, 1e3])
def test_ranks_are_scale_invariant(scale: float) -> None:
    z = _isotropic(300, 20) * torch.linspace(0.1, 2.0, 20, dtype=torch.float64)
    for fn in (dg.stable_rank, dg.effective_rank, dg.rankme, dg.alpha_req, dg.spectral_stable_rank):
        assert fn(z * scale) == pytest.approx(fn(z), rel=1e-8), fn.__name__


def test_effective_rank_closed_form_on_known_spectrum() -> None:
    lam = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    p = np.array([0.5, 0.25, 0.125, 0.125])
    assert spectrum.effective_rank_from_spectrum(lam) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_rankme_equals_its_formula_on_a_hand_case() -> None:
    # rows of 2·e1 and 1·e2 (uncentred): singular values are sqrt(sum of squares) per column
    z = torch.zeros(5, 3, dtype=torch.float64)
    z[:4, 0] = 2.0  # column 0 norm = 4
    z[4, 1] = 3.0  # column 1 norm = 3
    sigma = np.array([4.0, 3.0, 0.0])
    p = sigma / sigma.sum() + 1e-7
    expected = math.exp(-(p * np.log(p)).sum())
    assert dg.rankme(z) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(400, 50), (50, 400)])
def test_rankme_uses_uncentred_singular_values_like_numpy_svd(shape: tuple[int, int]) -> None:
    z = _isotropic(*shape) * torch.linspace(0.1, 3.0, shape[1], dtype=torch.float64) + 2.0
    s = np.linalg.svd(z.numpy(), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert dg.rankme(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_alpha_req_recovers_power_law_exponent() -> None:
    d, alpha = 120, 1.3
    lam = torch.arange(1, d + 1, dtype=torch.float64) ** -alpha
    assert spectrum.alpha_req_from_spectrum(lam) == pytest.approx(alpha, rel=1e-10)
    # from data: columns scaled so the covariance spectrum is the power law
    g = torch.Generator().manual_seed(1)
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    z = torch.randn(8_000, d, generator=g, dtype=torch.float64) * lam.sqrt() @ q.T
    assert dg.alpha_req(z) == pytest.approx(alpha, rel=0.1)


def test_alpha_req_weighted_fit_matches_numpy_polyfit_in_window() -> None:
    lam = torch.tensor(np.random.default_rng(3).uniform(0.1, 1.0, 150)).sort(descending=True).values
    ranks = np.arange(11, 101)
    y = np.log(lam.numpy()[10:100] / lam.numpy().sum())
    # np.polyfit weights multiply residuals, so sqrt(1/i) gives least squares weighted by 1/i
    slope = np.polyfit(np.log(ranks), y, 1, w=np.sqrt(1.0 / ranks))[0]
    assert spectrum.alpha_req_from_spectrum(lam) == pytest.approx(-slope, rel=1e-10)


def test_eigenvalue_log_ratio_and_floor() -> None:
    z = _isotropic(5000, 4) * torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    lam = dg.eigenspectrum(z)
    assert dg.eigenvalue_log_ratio(z) == pytest.approx(math.log(lam[0] / lam[-1]), rel=1e-12)
    rank_deficient = _rank_k(100, 10, 2)
    assert dg.eigenvalue_log_ratio(rank_deficient) == pytest.approx(-math.log(spectrum.LOG_RATIO_FLOOR))


def test_explained_variance_curve_and_components_for_90_percent() -> None:
    lam = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.5], dtype=torch.float64)
    curve = spectrum.explained_variance_from_spectrum(lam)
    np.testing.assert_allclose(curve.numpy(), [0.5, 0.8, 0.9, 0.95, 1.0])
    assert spectrum.components_for_variance(curve, 0.9) == 3
    z = _rank_k(1000, 20, 4)
    assert dg.components_for_90_percent(z) <= 4
    assert float(dg.explained_variance_curve(z)[-1]) == pytest.approx(1.0)


def test_normalized_singular_spectrum_is_sorted_log_of_normalised_covariance() -> None:
    z = _isotropic(200, 8) * torch.linspace(1, 3, 8, dtype=torch.float64)
    u = z / z.norm(dim=1, keepdim=True)
    ref = np.sort(np.linalg.eigvalsh(np.cov(u.numpy(), rowvar=False, bias=True)))[::-1]
    np.testing.assert_allclose(dg.normalized_singular_spectrum(z).numpy(), np.log(ref), rtol=1e-9)


def test_constant_embeddings_have_zero_spectrum_and_rank() -> None:
    z = torch.full((50, 6), 3.0)
    assert float(dg.eigenspectrum(z).abs().max()) == 0.0
    assert dg.stable_rank(z) == 0.0
    assert dg.effective_rank(z) == 0.0
    assert dg.rankme(z) == pytest.approx(1.0, abs=1e-5)  # one non-zero singular value


def test_gram_t_blas_path_equals_matmul() -> None:
    x = _isotropic(300, 90)
    np.testing.assert_allclose(spectrum.gram_t(x).numpy(), (x.T @ x).numpy(), rtol=1e-12, atol=1e-10)
