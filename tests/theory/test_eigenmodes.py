"""Eigenmode ODEs: fixed points, invariants, Jacobians, batched integration against SciPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from collapselab._validation import InputError
from collapselab.theory.eigenmodes import (
    COLLAPSED,
    NON_COLLAPSED,
    collapse_certificate,
    existence_threshold,
    fixed_points,
    integrate_modes,
    jacobian,
    mode_trajectory,
    phase_map,
    vector_field,
)


def test_fixed_points_are_zeros_of_the_field_below_threshold():
    eta = torch.tensor([0.01, 0.1, 0.2])
    sigma2, alpha_p = 0.2, 2.0
    fp = fixed_points(eta, sigma2, 1.0, alpha_p)
    assert bool(fp["exists"].all())
    for tag in ("plus", "minus"):
        dp, ds, _ = vector_field(
            fp[f"p_{tag}"],
            fp[f"s_{tag}"],
            1.0,
            eta=eta,
            alpha_p=alpha_p,
            sigma2=sigma2,
            target="stopgrad",
        )
        assert float(dp.abs().max()) < 1e-14 and float(ds.abs().max()) < 1e-14


def test_no_fixed_point_above_the_existence_threshold():
    sigma2, tau = 0.5, 1.0
    eta_c = existence_threshold(tau, sigma2)
    fp = fixed_points(torch.tensor([eta_c * 0.999, eta_c * 1.001]), sigma2, tau)
    assert fp["exists"].tolist() == [True, False]
    ps = torch.linspace(
        -2, 2, 40001, dtype=torch.float64
    )  # growth rate G(p) < 0 everywhere above η_c
    _, ds, _ = vector_field(
        ps, torch.ones_like(ps), tau, eta=eta_c * 1.001, sigma2=sigma2, target="stopgrad"
    )
    assert float(ds.max()) < 0


@pytest.mark.parametrize("target", ["stopgrad", "ema"])
def test_s_minus_p_squared_over_alpha_decays_as_exp_minus_two_eta_t(target):
    eta, alpha_p = 0.07, 1.7
    traj = mode_trajectory(
        torch.tensor([0.9, 0.2]),
        torch.tensor([0.3, 0.8]),
        torch.tensor([1.0, 0.6]),
        t_end=6.0,
        dt=0.01,
        num_records=6,
        eta=eta,
        alpha_p=alpha_p,
        beta=0.8,
        sigma2=0.4,
        target=target,
    )
    c = (traj["s"] - traj["p"] ** 2 / alpha_p) * torch.exp(2 * eta * traj["t"])[:, None]
    torch.testing.assert_close(c, c[:1].expand_as(c), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("target", ["stopgrad", "ema", "direct"])
def test_autograd_jacobian_matches_central_differences(target):
    point = dict(p=0.37, s=0.52, tau=0.9)
    params = dict(eta=0.03, alpha_p=1.3, beta=0.6, sigma2=0.25, target=target)
    jac = jacobian(point["p"], point["s"], point["tau"], **params)
    names = ["p", "s"] + (["tau"] if target == "ema" else [])
    h = 1e-6
    for j, name in enumerate(names):
        up, down = dict(point), dict(point)
        up[name] += h
        down[name] -= h
        f_up = vector_field(
            torch.tensor(up["p"], dtype=torch.float64), up["s"], up["tau"], **params
        )
        f_down = vector_field(
            torch.tensor(down["p"], dtype=torch.float64), down["s"], down["tau"], **params
        )
        for i, out in enumerate(names):
            k = ["p", "s", "tau"].index(out)
            numeric = (float(f_up[k]) - float(f_down[k])) / (2 * h)
            assert abs(float(jac[i, j]) - numeric) < 1e-7


def _reference_outcome(p0, s0, tau0, eta, alpha_p, beta, sigma2, target, t_end=4000.0):
    """Stiff SciPy solve (LSODA) of the plain (p, s, τ) equations written out here from the paper —
    independent of the library's field, log-s integrator and collapse certificates."""
    k = 1.0 + sigma2

    def rhs(_t, y):
        p, s, tau = y
        g = tau - k * p
        ds = 2 * p * s * g - 2 * eta * s
        dtau = beta * (1 - tau) - tau * (p * g - eta) if target == "ema" else 0.0
        return [alpha_p * s * g - eta * p, ds, dtau]

    def vanished(
        _t, y
    ):  # stop once s is 1e-14 of its start: the EMA ratio τ may grow without bound after
        return y[1] - 1e-14 * s0

    vanished.terminal = True
    sol = solve_ivp(
        rhs, (0, t_end), [p0, s0, tau0], method="LSODA", rtol=1e-10, atol=1e-18, events=vanished
    )
    return sol.y[:, -1]


def test_batched_integration_agrees_with_stiff_scipy_reference_on_random_configurations():
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(24):
        target = str(rng.choice(["stopgrad", "ema"]))
        eta = float(rng.uniform(0.01, 0.2))
        alpha_p = float(rng.choice([0.5, 1.0, 4.0]))
        beta = float(rng.choice([0.1, 1.0, 20.0]))
        sigma2 = float(rng.uniform(0, 1))
        p0 = float(rng.uniform(-0.2, 1.2))
        s0 = float(rng.uniform(0.01, 1.0))
        cases.append((p0, s0, 1.0, eta, alpha_p, beta, sigma2, target))
    for target in ("stopgrad", "ema"):
        chosen = [c for c in cases if c[-1] == target]
        cols = list(zip(*chosen, strict=True))
        res = integrate_modes(
            cols[0],
            cols[1],
            cols[2],
            eta=cols[3],
            alpha_p=cols[4],
            beta=cols[5],
            sigma2=cols[6],
            target=target,
        )
        for k, case in enumerate(chosen):
            p_ref, s_ref, _ = _reference_outcome(*case)
            expected = COLLAPSED if s_ref < 1e-8 else NON_COLLAPSED
            assert int(res.outcome[k]) == expected, case
            if expected == NON_COLLAPSED:
                assert abs(float(res.p[k]) - p_ref) < 1e-3


def test_collapse_certificate_regions_end_in_collapse():
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(400):
        eta, alpha_p, beta, sigma2 = (
            rng.uniform(0.02, 0.2),
            rng.uniform(0.5, 4),
            rng.uniform(0.1, 10),
            rng.uniform(0, 1),
        )
        p, s, tau = rng.uniform(-0.2, 0.3), 10 ** rng.uniform(-6, -1), rng.uniform(0.8, 1.3)
        for target in ("stopgrad", "ema"):
            tau_here = 1.0 if target == "stopgrad" else tau
            if not bool(
                collapse_certificate(
                    p,
                    s,
                    tau_here,
                    eta=eta,
                    alpha_p=alpha_p,
                    beta=beta,
                    sigma2=sigma2,
                    target=target,
                    predictor=True,
                )
            ):
                continue
            _, s_end, _ = _reference_outcome(
                p, s, tau_here, eta, alpha_p, beta, sigma2, target, t_end=2000.0
            )
            assert s_end < 1e-8 * s
            checked += 1
        if checked >= 12:
            break
    assert checked >= 12


def test_phase_map_reproduces_the_theoretical_basin_boundary_p_minus():
    pm = phase_map(
        eta=np.linspace(0.01, 0.3, 12),
        alpha_p=[0.5, 2.0],
        sigma2=[0.0, 0.5],
        p0=np.linspace(-0.1, 1.1, 25),
        target="stopgrad",
    )
    counts = pm.counts()
    assert counts["undecided"] == 0 and counts["collapsed"] > 50 and counts["non-collapsed"] > 50
    assert pm.agreement() == 1.0
    assert pm.outcome.shape == (12, 2, 1, 2, 25)


def test_direct_target_collapses_everywhere_in_the_phase_map():
    pm = phase_map(
        eta=[0.0, 0.1], alpha_p=[1.0], sigma2=[0.2], p0=np.linspace(-1, 2, 7), target="direct"
    )
    assert (pm.outcome == COLLAPSED).all()


def test_phase_map_writes_csv_json_and_png(tmp_path):
    pm = phase_map(eta=[0.05, 0.1, 0.3], p0=[0.0, 0.5, 1.0], target="ema", beta=[0.5])
    pm.write_csv(tmp_path / "m.csv")
    pm.write_json(tmp_path / "m.json")
    pm.plot(tmp_path / "m.png")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert len(lines) == 1 + 9 and lines[0].startswith("eta,alpha_p,beta,sigma2,p0,outcome")
    assert (tmp_path / "m.png").stat().st_size > 1000
    # η = 0.3 > η_c = 0.25 (σ² = 0): collapsed whatever p(0)
    assert all("collapsed" == row["outcome"] for row in pm.rows() if row["eta"] == 0.3)


def test_integrate_modes_rejects_bad_input():
    with pytest.raises(InputError, match="s0"):
        integrate_modes(0.5, -1.0)
    with pytest.raises(InputError, match="beta"):
        integrate_modes(0.5, 0.5, target="ema", beta=0.0)
    with pytest.raises(InputError, match="target"):
        integrate_modes(0.5, 0.5, target="simclr")
    with pytest.raises(InputError, match="finite"):
        integrate_modes(math.nan, 0.5)


def test_phase_map_without_predictor_collapses_unless_noise_and_decay_vanish():
    pm = phase_map(
        eta=[0.0, 0.05], sigma2=[0.0, 0.3], p0=[0.2, 0.8], target="stopgrad", predictor=False
    )
    assert pm.agreement() == 1.0
    # only η = σ² = 0 keeps s (G = 0: every rate is zero)
    assert (pm.outcome[0, :, :, 0] == NON_COLLAPSED).all() and (pm.outcome[1] == COLLAPSED).all()


@pytest.mark.slow
def test_benchmark_grid_of_100k_configurations_is_fully_decided_and_matches_theory():
    for target in ("stopgrad", "ema"):
        pm = phase_map(
            eta=np.linspace(0.005, 0.3, 20),
            alpha_p=[0.5, 1, 2, 4, 8],
            beta=[0.1, 0.5, 1, 2, 5],
            sigma2=[0, 0.25, 0.5, 1],
            p0=np.linspace(-0.2, 1.2, 50),
            target=target,
        )
        assert pm.size == 100_000 and pm.counts()["undecided"] == 0 and pm.agreement() == 1.0
