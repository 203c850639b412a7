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
    PHASE_AXES,
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


# ---------------------------------------------------------------------------------------------
# Phase maps against an independent reference. The library decides most collapsed configurations
# with its collapse certificate before integrating, and its `predicted` array comes from the same
# fixed-point formula, so `PhaseMap.agreement()` cannot tell a wrong boundary from a right one.
# These tests instead integrate a sample of each grid with SciPy's LSODA on the mode equations as
# docs/theory.md §2 writes them, and classify the end state with the rule below.

REF_T_END = 1e5  # the library's t_max
REF_DROP = 40.0  # collapsed once log s has fallen 40 (s down by e^40 ≈ 2e17) below min(log s(0), 0)
REF_STILL = (
    1e-8  # non-collapsed: every rate of (p, log s, τ) below this at t_end, with s > REF_S_MIN
)
REF_S_MIN = 1e-8


def _reference_verdict(p0, s0, tau0, eta, alpha_p, beta, sigma2, target, predictor=True):
    """Outcome of one mode by LSODA on the docs' equations, in (p, u = log s, τ) so that the
    exponential decay of a collapsing mode stays resolvable (u̇ = ṡ/s = 2G):

        ṗ = α_p s [τ − (1+σ²)p] − ηp,   G = p[τ − (1+σ²)p] − η,   τ̇ = β(1 − τ) − τG (EMA; τ ≡ 1
        for stop-gradient); direct: ṗ = −α_p s[(1+σ²)p − 1] − ηp, G = −[(1+σ²)p² − 2p + (1+σ²)] − η;
        no predictor: p ≡ 1.

    Rule: s(0) = 0 is the collapsed fixed point; otherwise *collapsed* when u falls REF_DROP below
    min(u(0), 0), *non-collapsed* when at t = REF_T_END every rate is below REF_STILL and
    s > REF_S_MIN, and *undecided* (returned as None) otherwise.
    """
    if s0 == 0.0:
        return COLLAPSED
    k = 1.0 + sigma2

    def rates(y):
        p, u, tau = y
        p = p if predictor else 1.0
        s = math.exp(u)
        if target == "direct":
            a = 1.0 - k * p
            g = -(k * p * p - 2.0 * p + k) - eta
        else:
            a = tau - k * p
            g = p * a - eta
        dp = alpha_p * s * a - eta * p if predictor else 0.0
        dtau = beta * (1.0 - tau) - tau * g if target == "ema" else 0.0
        return [dp, 2.0 * g, dtau]

    floor = min(math.log(s0), 0.0) - REF_DROP

    def vanished(_t, y):
        return y[1] - floor

    vanished.terminal = True
    sol = solve_ivp(
        lambda _t, y: rates(y),
        (0.0, REF_T_END),
        [p0, math.log(s0), tau0],
        method="LSODA",
        rtol=1e-10,
        atol=1e-12,
        events=vanished,
    )
    assert sol.success, sol.message
    if sol.status == 1:
        return COLLAPSED
    end = sol.y[:, -1]
    if max(abs(r) for r in rates(end)) < REF_STILL and math.exp(end[1]) > REF_S_MIN:
        return NON_COLLAPSED
    return None


def _p_minus(eta, sigma2, tau=1.0):
    """p*₋ = [τ − √(τ² − 4η(1+σ²))]/(2(1+σ²)) (docs/theory.md §2), NaN without fixed points."""
    disc = tau * tau - 4.0 * eta * (1.0 + sigma2)
    return math.nan if disc < 0 else (tau - math.sqrt(disc)) / (2.0 * (1.0 + sigma2))


def _sample_grid(pm, rng, n_random, n_boundary):
    """Multi-indices into ``pm.outcome``: ``n_random`` uniform ones, then for ``n_boundary``
    random (η, α_p, β, σ²) cells with fixed points the two p(0) grid values on either side of
    p*₋, then, for each σ², the two η values on either side of η_c = 1/(4(1+σ²)) at the largest
    p(0). Returns (indices, smallest |p(0) − p*₋| among the boundary pairs)."""
    shape = pm.outcome.shape
    ax = pm.axes
    picked = {tuple(int(rng.integers(n)) for n in shape) for _ in range(n_random)}
    cells = [
        c
        for c in np.ndindex(*shape[:4])
        if not math.isnan(_p_minus(ax["eta"][c[0]], ax["sigma2"][c[3]]))
    ]
    closest = math.inf
    for c in rng.permutation(len(cells))[:n_boundary]:
        cell = cells[c]
        pmin = _p_minus(ax["eta"][cell[0]], ax["sigma2"][cell[3]])
        above = int(np.searchsorted(ax["p0"], pmin))
        for j in (above - 1, above):
            if 0 <= j < len(ax["p0"]):
                picked.add((*cell, j))
                closest = min(closest, abs(ax["p0"][j] - pmin))
    for i_sig, sigma2 in enumerate(ax["sigma2"]):
        above = int(np.searchsorted(ax["eta"], 1.0 / (4.0 * (1.0 + sigma2))))
        for i_eta in (above - 1, above):
            if 0 <= i_eta < len(ax["eta"]):
                picked.add((i_eta, 0, 0, i_sig, len(ax["p0"]) - 1))
    return sorted(picked), closest


def _check_against_reference(pm, indices, *, theory=None):
    """Every sampled outcome of ``pm`` equals the LSODA reference; with ``theory`` (a function of
    the configuration returning True for collapse) the reference also equals the theory."""
    ax = pm.axes
    s0_fixed = None if pm.s0.startswith("p0^2") else float(pm.s0)
    checked = {COLLAPSED: 0, NON_COLLAPSED: 0}
    for idx in indices:
        cfg = {name: float(ax[name][i]) for name, i in zip(PHASE_AXES, idx, strict=True)}
        s0 = cfg["p0"] ** 2 / cfg["alpha_p"] if s0_fixed is None else s0_fixed
        ref = _reference_verdict(
            cfg["p0"],
            s0,
            1.0,
            cfg["eta"],
            cfg["alpha_p"],
            cfg["beta"],
            cfg["sigma2"],
            pm.target,
            pm.predictor,
        )
        assert ref is not None, f"reference undecided at {cfg}"
        assert int(pm.outcome[idx]) == ref, (cfg, int(pm.outcome[idx]), ref)
        if theory is not None:
            assert (ref == COLLAPSED) == theory(cfg), (cfg, ref)
        checked[ref] += 1
    return checked


def _basin_theory(cfg):
    """Collapse iff no fixed point exists or p(0) < p*₋ (Tian et al. Sec. 4, τ(0) = 1)."""
    pmin = _p_minus(cfg["eta"], cfg["sigma2"])
    return math.isnan(pmin) or cfg["p0"] < pmin


def test_phase_map_reproduces_the_theoretical_basin_boundary_p_minus():
    pm = phase_map(
        eta=np.linspace(0.01, 0.3, 12),
        alpha_p=[0.5, 2.0],
        sigma2=[0.0, 0.5],
        p0=np.linspace(-0.1, 1.1, 25),
        target="stopgrad",
    )
    assert pm.outcome.shape == (12, 2, 1, 2, 25)
    counts = pm.counts()
    assert counts["undecided"] == 0 and counts["collapsed"] > 50 and counts["non-collapsed"] > 50
    indices, closest = _sample_grid(pm, np.random.default_rng(18), n_random=16, n_boundary=8)
    assert 25 <= len(indices) <= 40 and closest < 0.05
    checked = _check_against_reference(pm, indices, theory=_basin_theory)
    assert checked[COLLAPSED] >= 8 and checked[NON_COLLAPSED] >= 8


def test_direct_target_phase_map_matches_the_reference_with_and_without_noise_and_decay():
    pm = phase_map(
        eta=[0.0, 0.1],
        alpha_p=[1.0],
        sigma2=[0.0, 0.2],
        p0=[-1.0, -0.5, 1.0, 1.5, 2.0],
        target="direct",
    )
    # σ² > 0 or η > 0: G ≤ −((1+σ²) − 1/(1+σ²)) − η < 0, collapse (the library certifies it at
    # t = 0; the reference integrates). σ² = η = 0: G = −(p − 1)² ≤ 0 is not certified, the
    # library integrates it: modes started at p(0) < 0 still collapse (s dies before p reaches 1),
    # those at p(0) ≥ 1 keep s. (p(0) ∈ [0, 1) is left out: p creeps to 1 on a time scale 1/s(t)
    # and the outcome is undecided at t_max for both integrators.)
    every = list(np.ndindex(*pm.outcome.shape))
    checked = _check_against_reference(
        pm, every, theory=lambda c: c["sigma2"] + c["eta"] > 0 or c["p0"] < 0
    )
    assert checked == {COLLAPSED: 17, NON_COLLAPSED: 3}


def test_phase_map_writes_csv_json_and_png(tmp_path):
    pm = phase_map(eta=[0.05, 0.1, 0.3], p0=[0.0, 0.5, 1.0], target="ema", beta=[0.5])
    pm.write_csv(tmp_path / "m.csv")
    pm.write_json(tmp_path / "m.json")
    pm.plot(tmp_path / "m.png")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert len(lines) == 1 + 9 and lines[0].startswith("eta,alpha_p,beta,sigma2,p0,outcome")
    assert (tmp_path / "m.png").stat().st_size > 1000
    # η = 0.3 > η_c = 0.25 (σ² = 0): collapsed whatever p(0); every row against the reference
    assert all("collapsed" == row["outcome"] for row in pm.rows() if row["eta"] == 0.3)
    _check_against_reference(pm, list(np.ndindex(*pm.outcome.shape)), theory=_basin_theory)


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
    # only η = σ² = 0 keeps s (G = 0: every rate is zero), checked on every configuration
    checked = _check_against_reference(
        pm, list(np.ndindex(*pm.outcome.shape)), theory=lambda c: c["sigma2"] + c["eta"] > 0
    )
    assert checked == {COLLAPSED: 6, NON_COLLAPSED: 2}


@pytest.mark.slow
def test_benchmark_grid_of_100k_configurations_is_fully_decided_and_matches_theory():
    for seed, target in enumerate(("stopgrad", "ema")):
        pm = phase_map(
            eta=np.linspace(0.005, 0.3, 20),
            alpha_p=[0.5, 1, 2, 4, 8],
            beta=[0.1, 0.5, 1, 2, 5],
            sigma2=[0, 0.25, 0.5, 1],
            p0=np.linspace(-0.2, 1.2, 50),
            target=target,
        )
        assert pm.size == 100_000 and pm.counts()["undecided"] == 0
        indices, _ = _sample_grid(pm, np.random.default_rng(seed), n_random=20, n_boundary=6)
        checked = _check_against_reference(pm, indices, theory=_basin_theory)
        assert min(checked.values()) >= 8
