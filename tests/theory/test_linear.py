"""Linear SSL dynamics: gradients against autograd, flows against closed forms, integrators against each other."""

from __future__ import annotations

import math

import pytest
import torch

from collapselab._validation import InputError
from collapselab.theory.eigenmodes import fixed_points
from collapselab.theory.linear import (
    LinearSSL,
    LinearState,
    integrate_adaptive,
    integrate_rk4,
    integrate_sgd,
    isotropic_data,
    sample_moments,
    sample_pairs,
    simulate,
)


def _spd(n: int, gen: torch.Generator, floor: float = 0.1) -> torch.Tensor:
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a @ a.T / n + floor * torch.eye(n, dtype=torch.float64)


def _state(model: LinearSSL, d: int, gen: torch.Generator) -> LinearState:
    W = torch.randn(model.batch, d, model.n, generator=gen, dtype=torch.float64)
    Wp = (
        torch.randn(model.batch, d, d, generator=gen, dtype=torch.float64)
        if model.predictor
        else None
    )
    Wa = (
        torch.randn(model.batch, d, model.n, generator=gen, dtype=torch.float64)
        if model.target == "ema"
        else None
    )
    return LinearState(W, Wp, Wa)


@pytest.mark.parametrize("target", ["direct", "stopgrad", "ema"])
@pytest.mark.parametrize("predictor", [True, False])
def test_moment_gradients_equal_autograd_of_sampled_loss(target, predictor, generator):
    X, Xp = _spd(4, generator), _spd(4, generator)
    model = LinearSSL(X, Xp, target=target, predictor=predictor, batch=2)
    state = _state(model, 3, generator)
    x1, x2 = sample_pairs(X, Xp, 64, batch=2, generator=generator)
    W = state.W.clone().requires_grad_(True)
    Wp = state.Wp.clone().requires_grad_(True) if predictor else None
    online = W @ x1.transpose(-1, -2)
    if predictor:
        online = Wp @ online
    if target == "direct":
        targ = W @ x2.transpose(-1, -2)
    elif target == "stopgrad":
        targ = (W @ x2.transpose(-1, -2)).detach()
    else:
        targ = state.Wa @ x2.transpose(-1, -2)
    loss = (
        0.5 * ((online - targ) ** 2).sum(-2).mean(-1).sum()
    )  # ½ mean over pairs, summed over configs
    loss.backward()
    grads = model.gradients(LinearState(state.W, state.Wp, state.Wa), sample_moments(x1, x2))
    torch.testing.assert_close(grads.W, W.grad, rtol=1e-10, atol=1e-10)
    if predictor:
        torch.testing.assert_close(grads.Wp, Wp.grad, rtol=1e-10, atol=1e-10)


def test_population_loss_matches_monte_carlo_average(generator):
    X, Xp = _spd(3, generator), _spd(3, generator)
    model = LinearSSL(X, Xp, target="ema", batch=1)
    state = _state(model, 2, generator)
    x1, x2 = sample_pairs(X, Xp, 400_000, generator=generator)
    r = state.Wp @ state.W @ x1.transpose(-1, -2) - state.Wa @ x2.transpose(-1, -2)
    monte_carlo = 0.5 * float((r**2).sum(-2).mean())
    exact = float(model.loss(state))
    assert abs(monte_carlo - exact) < 0.02 * exact


def test_naive_alignment_flow_equals_matrix_exponential_with_null_space_preserved(generator):
    n, d = 5, 3
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    S = basis @ torch.diag(torch.tensor([2.0, 1.0, 0.4, 0.0, 0.0], dtype=torch.float64)) @ basis.T
    model = LinearSSL(torch.eye(n, dtype=torch.float64), S / 2, target="direct", predictor=False)
    W0 = torch.randn(1, d, n, generator=generator, dtype=torch.float64)
    t = 1.7
    closed = W0[0] @ torch.linalg.matrix_exp(-S * t)  # J = ½E‖W(x₁ − x₂)‖² ⇒ Ẇ = −WS
    for integrate in (integrate_rk4, integrate_adaptive):
        _, states = integrate(model, LinearState(W0), t, num_records=1)
        torch.testing.assert_close(states[-1].W[0], closed, rtol=0, atol=1e-9)
    null = basis[:, 3:]
    torch.testing.assert_close(closed @ null, W0[0] @ null, rtol=0, atol=1e-12)
    assert (
        float((closed @ basis[:, :3]).norm())
        < float((W0[0] @ basis[:, :3]).norm()) * math.exp(-0.4 * t) + 1e-12
    )


def test_rk4_converges_to_the_adaptive_solution_at_fourth_order(generator):
    model = LinearSSL(
        _spd(4, generator),
        0.3 * _spd(4, generator),
        target="ema",
        weight_decay=0.05,
        beta=0.5,
        batch=3,
    )
    state = model.check_state(_state(model, 2, generator))
    _, ad = integrate_adaptive(model, state, 5.0, num_records=1)
    errors = []
    for dt in (0.02, 0.01):
        _, rk = integrate_rk4(model, state, 5.0, dt=dt, num_records=1)
        errors.append(max(float((a - b).abs().max()) for a, b in zip(rk[-1], ad[-1], strict=True)))
    assert errors[1] < 1e-5
    assert 10.0 < errors[0] / errors[1] < 22.0  # halving the step divides the error by ≈ 2⁴


@pytest.mark.parametrize("target", ["stopgrad", "ema"])
def test_sgd_on_sampled_pairs_tracks_the_expected_flow(target, generator):
    X, Xp = isotropic_data(3, 0.3)
    model = LinearSSL(X, Xp, target=target, weight_decay=0.05, beta=2.0, batch=1)
    W0 = torch.eye(2, 3, dtype=torch.float64)[None] * 0.3
    Wp0 = torch.eye(2, dtype=torch.float64)[None] * 0.4
    _, flow = integrate_rk4(model, LinearState(W0, Wp0), 4.0, dt=0.01, num_records=1)
    _, sgd = integrate_sgd(
        model,
        LinearState(W0, Wp0),
        4.0,
        dt=0.01,
        batch_size=512,
        num_records=1,
        generator=generator,
    )
    err = float((sgd[-1].W - flow[-1].W).abs().max())
    moved = float((flow[-1].W - W0).abs().max())
    assert moved > 0.15 and err < 0.1 * moved  # the flow moves; SGD follows it within sampling noise


def test_simulate_stopgrad_with_predictor_converges_to_p_plus():
    eta, sigma2 = 0.05, 0.5
    res = simulate(
        "stopgrad",
        d=2,
        n=3,
        sigma2=sigma2,
        weight_decay=eta,
        Wp0=torch.eye(2, dtype=torch.float64),
        t_end=150.0,
        dt=0.1,
        integrator="adaptive",
        num_records=5,
    )
    fp = fixed_points(eta, sigma2)
    assert res.outcome == [["non-collapsed", "non-collapsed"]]
    torch.testing.assert_close(res.limit["p"][0], fp["p_plus"].expand(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(res.limit["s"][0], fp["s_plus"].expand(2), rtol=0, atol=1e-5)
    assert bool(res.converged[0])


@pytest.mark.parametrize("target", ["direct", "stopgrad", "ema"])
def test_simulate_without_predictor_collapses_every_mode(target):
    res = simulate(
        target,
        predictor=False,
        d=3,
        n=4,
        sigma2=0.5,
        weight_decay=0.01,
        t_end=60.0,
        dt=0.1,
        num_configs=2,
        num_records=5,
    )
    assert res.outcome == [["collapsed"] * 3] * 2
    assert res.singular_values.shape == (6, 2, 3)


def test_simulate_per_configuration_weight_decay_separates_collapse_from_survival():
    # above the threshold η_c = 1/(4(1+σ²)) = 0.25 every mode collapses; below it they survive from p(0) = 1
    res = simulate(
        "stopgrad",
        d=2,
        n=2,
        sigma2=0.0,
        weight_decay=torch.tensor([0.1, 0.4]),
        num_configs=2,
        Wp0=torch.eye(2, dtype=torch.float64),
        W0=torch.eye(2, dtype=torch.float64).expand(2, 2, 2),
        t_end=120.0,
        dt=0.1,
        num_records=5,
    )
    assert res.outcome[0] == ["non-collapsed"] * 2
    assert res.outcome[1] == ["collapsed"] * 2


def test_ema_target_ratio_relaxes_to_one_at_equilibrium():
    res = simulate(
        "ema",
        d=2,
        n=2,
        sigma2=0.2,
        weight_decay=0.02,
        beta=0.5,
        Wp0=torch.eye(2, dtype=torch.float64),
        t_end=200.0,
        integrator="adaptive",
        num_records=4,
    )
    torch.testing.assert_close(
        res.limit["tau"][0], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-4
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target="byol"), "target"),
        (dict(integrator="euler"), "integrator"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(alpha_p=0.0), "alpha_p"),
        (dict(X=torch.ones(3, 2)), "X"),
        (dict(X=torch.eye(4), X_prime=-torch.eye(4)), "positive semi-definite"),
        (dict(t_end=0.0), "t_end"),
        (dict(W0=torch.ones(2, 3, 4, 5)), "W0"),
    ],
)
def test_simulate_rejects_bad_input_with_input_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        simulate(**kwargs)
