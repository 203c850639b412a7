"""The band terms: each against a float64 loop or an independent library formula, where they put
the band at their optimum, gradcheck, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from collapselab._validation import InputError
from collapselab.losses import band_floor, band_kl_prior, band_nll


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int = 6, d: int = 4, k: int | None = None, seed: int = 0):
    g = _gen(seed)
    mean = torch.randn(n, d, generator=g, dtype=torch.float64)
    target = torch.randn(n, d, generator=g, dtype=torch.float64)
    sigma = torch.rand(n, d if k is None else k, generator=g, dtype=torch.float64) + 0.2
    return mean, target, sigma


def _nll_loop(mean, target, sigma) -> float:
    n, d = mean.shape
    total = 0.0
    for b in range(n):
        for j in range(d):
            s = float(sigma[b, j if sigma.shape[1] == d else 0])
            r = float(target[b, j] - mean[b, j])
            total += 0.5 * (r * r / (s * s) + math.log(s * s))
    return total / (n * d)


@pytest.mark.parametrize("columns", [None, 1])
def test_band_nll_equals_the_float64_loop_for_a_diagonal_and_a_scalar_band(columns) -> None:
    mean, target, sigma = _data(k=columns)
    assert float(band_nll(mean, target, sigma)) == pytest.approx(_nll_loop(mean, target, sigma), rel=1e-12)


def test_band_nll_is_torchs_gaussian_nll_and_clamps_the_variance_like_it() -> None:
    mean, target, sigma = _data()
    expected = F.gaussian_nll_loss(mean, target, sigma.square(), eps=1e-6)
    assert float(band_nll(mean, target, sigma)) == pytest.approx(float(expected), rel=1e-12)
    tiny = torch.full_like(sigma, 1e-9)  # below √ε = 1e-3: scored as 1e-3, so the loss stays finite
    clamped = F.gaussian_nll_loss(mean, target, torch.full_like(sigma, 1e-6), eps=1e-6)
    assert float(band_nll(mean, target, tiny)) == pytest.approx(float(clamped), rel=1e-12)


def test_band_nll_is_smallest_where_the_band_equals_the_disagreement() -> None:
    # per entry ½[r²/σ² + log σ²] has its minimum at σ = |r|: the band covers the views' disagreement
    mean, target, _ = _data()
    best = (target - mean).abs().clamp_min(1e-3)
    at_best = float(band_nll(mean, target, best))
    for factor in (0.5, 0.9, 1.1, 2.0):
        assert float(band_nll(mean, target, best * factor)) > at_best
    log_sigma = best.log().requires_grad_(True)
    band_nll(mean, target, log_sigma.exp()).backward()
    assert log_sigma.grad is not None and float(log_sigma.grad.abs().max()) < 1e-12


def _kl_loop(sigma, reference: float) -> float:
    values = [math.log(reference / float(s)) + float(s) ** 2 / (2 * reference**2) - 0.5 for s in sigma.flatten()]
    return sum(values) / len(values)


@pytest.mark.parametrize("columns", [None, 1])
def test_band_kl_prior_equals_the_closed_form_loop_and_torchs_normal_kl(columns) -> None:
    _, _, sigma = _data(k=columns)
    assert float(band_kl_prior(sigma, 0.7)) == pytest.approx(_kl_loop(sigma, 0.7), rel=1e-12)
    # the same centre μ for both Gaussians: the mean term of the KL vanishes
    mu = torch.randn(sigma.shape, generator=_gen(5), dtype=torch.float64)
    reference = kl_divergence(Normal(mu, sigma), Normal(mu, torch.full_like(sigma, 0.7))).mean()
    assert float(band_kl_prior(sigma, 0.7)) == pytest.approx(float(reference), rel=1e-12)


def test_band_kl_prior_is_zero_only_at_the_reference_and_grows_both_ways() -> None:
    widths = torch.tensor([[1e-3], [0.1], [0.5], [2.0], [10.0]], dtype=torch.float64)
    values = [float(band_kl_prior(w[None], 0.5)) for w in widths]
    assert values[2] == 0.0
    assert values[0] > values[1] > 0 and values[4] > values[3] > 0
    # per-row reference widths broadcast
    assert float(band_kl_prior(widths, widths)) == 0.0


def test_band_floor_is_a_log_hinge_with_gradient_minus_one_below_the_floor() -> None:
    sigma = torch.tensor([[0.05, 0.2], [0.5, 1.0]], dtype=torch.float64)
    expected = (math.log(0.3 / 0.05) + math.log(0.3 / 0.2)) / 4
    assert float(band_floor(sigma, 0.3)) == pytest.approx(expected, rel=1e-12)
    log_sigma = sigma.log().requires_grad_(True)
    band_floor(log_sigma.exp(), 0.3).backward()
    assert log_sigma.grad.flatten().tolist() == pytest.approx([-0.25, -0.25, 0.0, 0.0], abs=1e-15)
    assert float(band_floor(sigma, 0.01)) == 0.0


@pytest.mark.parametrize("w_nll, w_prior", [(1.0, 2.0), (12.5, 25.0), (1.0, 5.0)])
def test_at_perfect_agreement_the_kl_prior_holds_the_band_at_its_predicted_width(w_nll, w_prior) -> None:
    # r = 0: w_nll·½ log σ² + w_prior·KL has its minimum at σ² = σ_ref²(1 − w_nll/w_prior)
    reference = 0.5
    predicted = reference * math.sqrt(1 - w_nll / w_prior)
    mean = torch.zeros(3, 2, dtype=torch.float64)

    def objective(log_sigma: torch.Tensor) -> torch.Tensor:
        sigma = log_sigma.exp().expand(3, 2)
        return w_nll * band_nll(mean, mean, sigma) + w_prior * band_kl_prior(sigma, reference)

    log_sigma = torch.tensor([[math.log(predicted)]], dtype=torch.float64, requires_grad=True)
    objective(log_sigma).backward()
    assert abs(float(log_sigma.grad)) < 1e-12
    for factor in (0.8, 1.25):
        assert float(objective(torch.tensor([[math.log(predicted * factor)]], dtype=torch.float64))) > float(
            objective(log_sigma.detach()))


@pytest.mark.parametrize("prior", ["kl", "floor"])
def test_with_the_prior_weight_at_most_the_likelihoods_nothing_stops_the_band_from_vanishing(prior) -> None:
    # the gradient in log σ at r = 0 is w_nll − w_prior·(1 − σ²/σ_ref²) (KL) or w_nll − w_prior
    # (floor, below it): positive for every small σ when w_prior ≤ w_nll (KL) or w_prior < w_nll
    # (floor), so descent shrinks σ without end
    mean = torch.zeros(2, 2, dtype=torch.float64)
    term = band_kl_prior if prior == "kl" else band_floor
    cases = ((1.0, True), (0.5, True), (2.0, False)) if prior == "kl" else ((0.5, True), (2.0, False))
    for w_prior, shrinks in cases:
        log_sigma = torch.tensor([[math.log(1e-3)]], dtype=torch.float64, requires_grad=True)
        sigma = log_sigma.exp().expand(2, 2)
        (1.0 * band_nll(mean, mean, sigma, eps=1e-30) + w_prior * term(sigma, 0.5)).backward()
        assert (float(log_sigma.grad) > 0) is shrinks, (prior, w_prior)


def test_band_terms_pass_gradcheck_in_float64() -> None:
    mean, target, sigma = _data(n=4, d=3)
    for columns in (3, 1):
        args = (mean.clone().requires_grad_(True), target.clone().requires_grad_(True),
                sigma[:, :columns].clone().requires_grad_(True))
        assert torch.autograd.gradcheck(band_nll, args, eps=1e-6, atol=1e-6)
        s = sigma[:, :columns].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x: band_kl_prior(x, 0.6), (s,), eps=1e-6, atol=1e-6)
        assert torch.autograd.gradcheck(lambda x: band_floor(x, 2.0), (s,), eps=1e-6, atol=1e-6)


def test_band_terms_reject_bad_input_and_say_what() -> None:
    mean, target, sigma = _data()
    with pytest.raises(InputError, match="same shape"):
        band_nll(mean, target[:, :3], sigma)
    with pytest.raises(InputError, match="1 or 4 columns"):
        band_nll(mean, target, sigma[:, :2])
    with pytest.raises(InputError, match="rows"):
        band_nll(mean, target, sigma[:3])
    with pytest.raises(InputError, match="non-finite"):
        band_nll(mean, target, sigma.clone().fill_(float("nan")))
    with pytest.raises(InputError, match="positive"):
        band_kl_prior(sigma, 0.0)
    with pytest.raises(InputError, match="positive"):
        band_floor(sigma, -1.0)
    with pytest.raises(InputError, match="eps"):
        band_nll(mean, target, sigma, eps=0.0)
