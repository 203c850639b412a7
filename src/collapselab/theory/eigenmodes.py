"""Eigenmode dynamics of linear BYOL/SimSiam (Tian, Chen & Ganguli 2021, arXiv 2102.06810, Sec. 4).

With X = I, X′ = σ²I, a symmetric predictor W_p aligned with F = WWᵀ and a target W_a = τW
(τ per mode), the matrix flow of :mod:`collapselab.theory.linear` splits into independent modes
(p_j, s_j, τ_j) — eigenvalues of W_p, F and the target ratio — obeying (Tian et al. Sec. 4, with
τ tracked per mode)

    ṗ = α_p s [τ − (1+σ²)p] − ηp
    ṡ = 2ps [τ − (1+σ²)p] − 2ηs
    sτ̇ = β(1 − τ)s − τṡ/2        (EMA; stop-gradient is τ ≡ 1, i.e. β → ∞)

Writing G = p[τ − (1+σ²)p] − η (so ṡ = 2sG), the EMA equation is τ̇ = β(1 − τ) − τG.
Without stop-gradient (``target="direct"``, gradients through W_a = W) the same reduction gives
ṗ = −α_p s[(1+σ²)p − 1] − ηp and G = −[(1+σ²)p² − 2p + (1+σ²)] − η < 0: every mode decays.
Without a predictor p ≡ 1.

Facts implemented and checked here (Tian et al. Sec. 4, Theorem 3 and Fig. 3):

* s − p²/α_p = c·e^{−2ηt} (for any τ(t)), so s = p²/α_p is an invariant manifold;
* for fixed τ the non-trivial fixed points are p*± = [τ ± √(τ² − 4η(1+σ²))] / (2(1+σ²)),
  s* = p*²/α_p, existing only when η ≤ τ²/(4(1+σ²));
* p*₊ is stable, p*₋ a saddle, the origin stable for η > 0; on the invariant manifold a mode
  collapses iff p(0) < p*₋ (or no non-trivial fixed point exists).

Integration is batched over configurations (a flat batch of any size): an embedded
Dormand–Prince 5(4) method with a step size per configuration, run in (p, log s, τ) so that the
exponential approach to collapse is a straight line, and an active set that drops each
configuration as soon as it has converged (to a non-trivial equilibrium, or into collapse).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from collapselab._validation import InputError

EIGENMODE_TARGETS = ("stopgrad", "ema", "direct")
COLLAPSED, NON_COLLAPSED, UNDECIDED = 0, 1, 2
OUTCOME_NAMES = {COLLAPSED: "collapsed", NON_COLLAPSED: "non-collapsed", UNDECIDED: "undecided"}
PHASE_AXES = ("eta", "alpha_p", "beta", "sigma2", "p0")


def _check_target(target: str) -> None:
    if target not in EIGENMODE_TARGETS:
        raise InputError(f"target={target!r} is not one of {EIGENMODE_TARGETS}")


def _rates(p, tau, eta, sigma2, target: str, predictor: bool):
    """(a, G) with ṗ = α_p s·a − ηp and ṡ = 2sG (see the module docstring)."""
    one_s = 1.0 + sigma2
    if not predictor:
        p = torch.ones_like(p) if isinstance(p, torch.Tensor) else 1.0
    if target == "direct":
        a = 1.0 - one_s * p
        growth = -(one_s * p * p - 2.0 * p + one_s) - eta
    else:
        a = tau - one_s * p
        growth = p * a - eta
    return a, growth


def vector_field(
    p,
    s,
    tau,
    *,
    eta=0.0,
    alpha_p=1.0,
    beta=1.0,
    sigma2=0.0,
    target: str = "ema",
    predictor: bool = True,
):
    """(ṗ, ṡ, τ̇) of one eigenmode; arguments broadcast (tensors or floats).

    ``target="stopgrad"`` and ``"direct"`` return τ̇ = 0 (τ is a constant there; use τ = 1 for
    plain stop-gradient). Without a predictor ṗ = 0 and p is read as 1.
    """
    _check_target(target)
    a, growth = _rates(p, tau, eta, sigma2, target, predictor)
    dp = alpha_p * s * a - eta * p if predictor else 0.0 * p
    ds = 2.0 * s * growth
    dtau = beta * (1.0 - tau) - tau * growth if target == "ema" else 0.0 * tau
    return dp, ds, dtau


def existence_threshold(tau=1.0, sigma2=0.0):
    """Largest weight decay with non-trivial fixed points: η_c = τ²/(4(1+σ²)) (Tian et al. Sec. 4)."""
    return tau * tau / (4.0 * (1.0 + sigma2))


def fixed_points(eta, sigma2=0.0, tau=1.0, alpha_p=1.0) -> dict[str, torch.Tensor]:
    """Non-trivial fixed points p*± = [τ ± √(τ² − 4η(1+σ²))]/(2(1+σ²)), s*± = p*±²/α_p.

    Returns tensors ``p_plus``, ``p_minus``, ``s_plus``, ``s_minus`` (NaN where they do not exist)
    and the boolean ``exists`` (η ≤ τ²/(4(1+σ²))). Arguments broadcast. The theory (p*₊ stable,
    p*₋ a saddle) is for η ≥ 0, σ² ≥ 0, α_p > 0 and a target ratio τ > 0 (W_a = τW); outside
    those ranges the formulas still evaluate but describe no training run.
    """
    eta, sigma2, tau, alpha_p = (
        torch.as_tensor(v, dtype=torch.float64) for v in (eta, sigma2, tau, alpha_p)
    )
    disc = tau * tau - 4.0 * eta * (1.0 + sigma2)
    exists = disc >= 0
    root = torch.where(exists, disc.clamp_min(0).sqrt(), torch.full_like(disc, math.nan))
    p_plus = (tau + root) / (2.0 * (1.0 + sigma2))
    p_minus = (tau - root) / (2.0 * (1.0 + sigma2))
    return {
        "p_plus": p_plus,
        "p_minus": p_minus,
        "s_plus": p_plus**2 / alpha_p,
        "s_minus": p_minus**2 / alpha_p,
        "exists": exists,
    }


def jacobian(
    p,
    s,
    tau=1.0,
    *,
    eta=0.0,
    alpha_p=1.0,
    beta=1.0,
    sigma2=0.0,
    target: str = "stopgrad",
    predictor: bool = True,
) -> torch.Tensor:
    """Jacobian of the mode field at a batch of points, by automatic differentiation.

    Variables: (p, s) for stopgrad/direct, (p, s, τ) for ema; (s) alone without a predictor
    (plus τ for ema). Returns (..., k, k) float64.
    """
    _check_target(target)
    names = (["p"] if predictor else []) + ["s"] + (["tau"] if target == "ema" else [])
    values = dict(
        zip(
            ("p", "s", "tau", "eta", "alpha_p", "beta", "sigma2"),
            torch.broadcast_tensors(
                *(
                    torch.as_tensor(v, dtype=torch.float64)
                    for v in (p, s, tau, eta, alpha_p, beta, sigma2)
                )
            ),
            strict=True,
        )
    )
    shape = values["p"].shape
    flat = {k: v.reshape(-1).clone() for k, v in values.items()}
    inputs = [flat[k].requires_grad_(True) for k in names]
    var = dict(zip(names, inputs, strict=True))
    with torch.enable_grad():
        dp, ds, dtau = vector_field(
            var.get("p", flat["p"]),
            var["s"],
            var.get("tau", flat["tau"]),
            eta=flat["eta"],
            alpha_p=flat["alpha_p"],
            beta=flat["beta"],
            sigma2=flat["sigma2"],
            target=target,
            predictor=predictor,
        )
        outputs = {"p": dp, "s": ds, "tau": dtau}
        rows = []
        for name in names:  # the field is elementwise over the batch: one backward pass per output
            grads = torch.autograd.grad(
                outputs[name].sum(), inputs, retain_graph=True, allow_unused=True
            )
            rows.append(
                torch.stack(
                    [
                        torch.zeros_like(x) if g is None else g
                        for g, x in zip(grads, inputs, strict=True)
                    ],
                    -1,
                )
            )
    return torch.stack(rows, -2).detach().reshape(*shape, len(names), len(names))


def stability(p, s, tau=1.0, **params) -> dict[str, torch.Tensor]:
    """Jacobian eigenvalues at (p, s, τ) and the largest real part (< 0: asymptotically stable)."""
    eig = torch.linalg.eigvals(jacobian(p, s, tau, **params))
    return {"eigenvalues": eig, "max_real": eig.real.max(-1).values}


def predicted_collapse(p0, eta, sigma2=0.0, tau=1.0) -> torch.Tensor:
    """Theory's verdict for a mode started on the invariant manifold s = p²/α_p with τ fixed:
    collapses iff no non-trivial fixed point exists or p(0) < p*₋."""
    fp = fixed_points(eta, sigma2, tau)
    p0 = torch.as_tensor(p0, dtype=torch.float64)
    return ~fp["exists"] | (p0 < fp["p_minus"])


# ---------------------------------------------------------------------------------------------
# Batched adaptive integration to convergence

_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


@dataclass
class ModeIntegration:
    """Result of :func:`integrate_modes` (flat batch of M configurations)."""

    p: torch.Tensor
    s: torch.Tensor
    tau: torch.Tensor
    outcome: torch.Tensor  # int8: 0 collapsed, 1 non-collapsed, 2 undecided (t_max reached)
    t_final: torch.Tensor
    steps: int
    evaluations: int
    seconds: float


def _log_field(y, eta, alpha, beta, one_s, target, predictor):
    """Rates of (p, u = log s, τ) for a (3, M) state; ``one_s`` = 1 + σ²."""
    p, u, tau = y[0], y[1], y[2]
    if not predictor:
        p = torch.ones_like(p)
    if target == "direct":
        a = 1.0 - one_s * p
        growth = (2.0 - one_s * p) * p - one_s - eta
    else:
        a = tau - one_s * p
        growth = p * a - eta
    out = torch.empty_like(y)
    if predictor:
        torch.mul(torch.exp(u).mul_(a).mul_(alpha), 1.0, out=out[0]).sub_(eta * p)
    else:
        out[0].zero_()
    torch.mul(growth, 2.0, out=out[1])
    if target == "ema":
        torch.sub(beta, beta * tau, out=out[2]).sub_(tau * growth)
    else:
        out[2].zero_()
    return out


def _combine(ks, coefs, scale=None, base=None):
    """base + scale * Σ coef_j k_j, with few temporaries."""
    acc = None
    for k, coef in zip(ks, coefs, strict=False):
        if coef == 0.0:
            continue
        if acc is None:
            acc = k * coef
        else:
            acc.add_(k, alpha=coef)
    if scale is not None:
        acc.mul_(scale)
    if base is not None:
        acc.add_(base)
    return acc


def collapse_certificate(p, s, tau, *, eta, alpha_p, beta, sigma2, target: str, predictor: bool):
    """True where the mode is in a region proven to end in collapse (s → 0); arguments broadcast.

    With k = 1 + σ², w = √s and target singular value w_a = τw, the mode obeys
    ẇ = p·w_a − (kp² + η)w, ẇ_a = β(w − w_a), ṗ = αw(w_a − kpw) − ηp (EMA), and ṡ = 2sG.

    * stop-gradient (τ fixed): if η > τ²/(4k) then G ≤ τ²/(4k) − η < 0 everywhere; otherwise the
      box {p < p*₋, s < s*₋ = p*₋²/α_p} is forward-invariant (ṡ < 0 on its top edge since G < 0
      left of p*₋, ṗ < 0 on its right edge since α_p s (τ − kp) < ηp there) and G ≤ G(p₁) < 0 inside.
    * EMA: M(p) = [[−(kp²+η), p], [β, −β]] is Metzler for p ≥ 0 with det = β(kp² − p + η), positive
      for p < p*₋(τ=1). Pick p₁ = (max(p, 0) + p*₋)/2 and 1 < ρ < kp₁ + η/p₁; then
      V = max(w, w_a/ρ) decreases while p ≤ p₁, and p cannot cross p₁ while α_p·ρ·V² < ηp₁.
      Without fixed points (η > 1/(4k)) any 1 < ρ < 2√(kη) works for every p.
    * direct: G ≤ −(k − 1/k) − η < 0 whenever σ² > 0 or η > 0.
    * no predictor (p ≡ 1): stop-gradient G = τ − k − η; EMA is linear with det = β(k + η − 1).
    """
    p, s, tau, eta, alpha, beta, sigma2 = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float64) for v in (p, s, tau, eta, alpha_p, beta, sigma2))
    )
    consts = _certificate_constants(eta, alpha, sigma2, tau, target)
    return _certified(p, s, tau, eta, alpha, 1.0 + sigma2, consts, target, predictor)


def _certificate_constants(
    eta, alpha, sigma2, tau, target: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(no fixed point, p*₋, s*₋) used by the collapse certificate; τ = 1 for EMA."""
    fp = fixed_points(eta, sigma2, tau if target == "stopgrad" else 1.0, alpha)
    return ~fp["exists"], fp["p_minus"].nan_to_num(0.0), fp["s_minus"].nan_to_num(0.0)


def _certified(p, s, tau, eta, alpha, k, consts, target: str, predictor: bool) -> torch.Tensor:
    none, p_minus, s_minus = consts
    if target == "direct":
        return ((2.0 * (k - 1.0) + eta) > 0) if not predictor else ((k > 1.0) | (eta > 0))
    if not predictor:
        return (tau - k - eta < 0) if target == "stopgrad" else (k + eta - 1.0 > 0)
    if target == "stopgrad":
        return none | ((p < p_minus) & (s < s_minus))
    p1 = 0.5 * (p.clamp_min(0.0) + p_minus)
    safe_p1 = torch.where(p1 > 0, p1, torch.ones_like(p1))
    rho = 0.5 * (1.0 + k * safe_p1 + eta / safe_p1)
    boxed = (
        (p < p_minus) & (p1 > 0) & (alpha * torch.maximum(rho * s, tau * tau * s / rho) < eta * p1)
    )
    return none | boxed


def integrate_modes(
    p0,
    s0,
    tau0=1.0,
    *,
    eta=0.0,
    alpha_p=1.0,
    beta=1.0,
    sigma2=0.0,
    target: str = "stopgrad",
    predictor: bool = True,
    t_max: float = 1e5,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    speed_tol: float = 1e-6,
    equilibrium_tol: float = 1e-4,
    collapse_s: float = 1e-12,
    dtype: torch.dtype = torch.float64,
) -> ModeIntegration:
    """Integrate a flat batch of eigenmodes until each has converged; arguments broadcast to (M,).

    A configuration stops when it has

    * *collapsed*: it entered a region proven to end in collapse (:func:`collapse_certificate`;
      when no non-trivial fixed point exists that is the whole space, decided at t = 0), or
      s < ``collapse_s`` while shrinking with p on the collapsing side p(1+σ²) ≤ τ/2;
    * reached a *non-collapsed* equilibrium: every |rate| of (p, log s, τ) < ``speed_tol``, or
      (stopgrad/EMA with predictor) the state is within ``equilibrium_tol`` (relative, and at most
      a tenth of the gap p*₊ − p*₋) of the stable fixed point (p*₊, p*₊²/α_p, τ = 1 for EMA);
      this second test matters for stiff configurations (large β) whose slow approach would
      otherwise cost thousands of explicit steps;
    * otherwise it is *undecided* at ``t_max``. s0 = 0 is the collapsed fixed point.
    """
    _check_target(target)
    if not (
        t_max > 0
        and rtol > 0
        and atol > 0
        and speed_tol > 0
        and collapse_s > 0
        and equilibrium_tol > 0
    ):
        raise InputError(
            "t_max, rtol, atol, speed_tol, equilibrium_tol and collapse_s must all be > 0"
        )
    start = time.perf_counter()
    args = torch.broadcast_tensors(
        *(
            torch.as_tensor(v, dtype=dtype).reshape(-1)
            for v in (p0, s0, tau0, eta, alpha_p, beta, sigma2)
        )
    )
    p0, s0, tau0, eta, alpha, beta_t, sig = (a.contiguous() for a in args)
    if not all(bool(torch.isfinite(v).all()) for v in (p0, s0, tau0, eta, alpha, beta_t, sig)):
        raise InputError("p0, s0, tau0, eta, alpha_p, beta and sigma2 must be finite")
    if bool((s0 < 0).any()):
        raise InputError("s0: eigenvalues of F = WWᵀ are >= 0; got a negative s0")
    if bool((eta < 0).any()) or bool((alpha <= 0).any()) or bool((sig < 0).any()):
        raise InputError("need eta >= 0, alpha_p > 0 and sigma2 >= 0")
    if target == "ema" and bool((beta_t <= 0).any()):
        raise InputError(
            "beta: the EMA rate must be > 0 (β → ∞ is the stop-gradient target: "
            "target='stopgrad', on the command line --target stopgrad)"
        )
    m = p0.numel()
    outcome = torch.full((m,), UNDECIDED, dtype=torch.int8)
    t_final = torch.zeros(m, dtype=dtype)
    y_all = torch.stack((p0, torch.log(s0.clamp_min(torch.finfo(dtype).tiny)), tau0))
    zero_s = s0 <= 0
    outcome[zero_s] = COLLAPSED

    # the stable non-trivial equilibrium, where the theory says it exists
    check_eq = predictor and target in ("stopgrad", "ema")
    tau_eq = torch.ones_like(tau0) if target == "ema" else tau0
    fp = fixed_points(eta, sig, tau_eq, alpha)
    gap = (fp["p_plus"] - fp["p_minus"]).nan_to_num(0.0)
    radius = torch.minimum(
        equilibrium_tol * (1.0 + fp["p_plus"].nan_to_num(0.0).abs()), 0.1 * gap
    ).to(dtype)
    eq_p, eq_u = (
        fp["p_plus"].nan_to_num(0.0).to(dtype),
        torch.log(fp["s_plus"].nan_to_num(1.0).clamp_min(1e-300)).to(dtype),
    )

    idx = torch.nonzero(~zero_s).squeeze(1)
    y = y_all[:, idx]
    one_s_all = 1.0 + sig
    consts = _certificate_constants(eta, alpha, sig, tau0, target)
    params = [v[idx] for v in (eta, alpha, beta_t, one_s_all, radius, eq_p, eq_u, tau_eq, *consts)]

    def f(state, prm):
        return _log_field(state, prm[0], prm[1], prm[2], prm[3], target, predictor)

    log_cs = math.log(collapse_s)
    t = torch.zeros(idx.numel(), dtype=dtype)
    k1 = f(y, params)
    h = torch.full_like(t, 0.1)
    steps = evaluations = 0
    active = torch.ones_like(t, dtype=torch.bool)
    while bool(active.any()):
        ks = [k1]
        for stage in range(1, 7):
            ks.append(f(_combine(ks, _DP_A[stage], h, y), params))
        y_new = _combine(ks, _DP_A[6], h, y)
        err_vec = _combine(ks, _DP_E, h)
        scale = torch.maximum(y.abs(), y_new.abs()).mul_(rtol).add_(atol)
        err = err_vec.div_(scale).square_().mean(0).sqrt_()
        evaluations += 6
        steps += 1
        accept = err <= 1.0
        factor = err.clamp_min(1e-10).pow_(-0.2).mul_(0.9).clamp_(0.2, 5.0)
        y = torch.where(accept, y_new, y)
        k1 = torch.where(accept, ks[6], k1)
        t = torch.where(accept, t + h, t)
        h = torch.minimum(h * factor, t_max - t).clamp_min(1e-12)
        # convergence tests on the current state
        p, u, tau = y[0], y[1], y[2]
        collapsing = (u < log_cs) & (k1[1] < 0)
        if predictor and target != "direct":
            collapsing &= p * params[3] <= 0.5 * tau
        collapsing |= _certified(
            p, torch.exp(u), tau, params[0], params[1], params[3], params[8:11], target, predictor
        )
        settled = k1.abs().amax(0) < speed_tol
        if check_eq:
            rad = params[4]
            settled |= (
                ((p - params[5]).abs() < rad)
                & ((u - params[6]).abs() < rad)
                & ((tau - params[7]).abs() < rad)
            )
        done = (collapsing | settled | (t >= t_max) | ~torch.isfinite(y).all(0)) & active
        if bool(done.any()):
            code = torch.where(
                collapsing, COLLAPSED, torch.where(settled, NON_COLLAPSED, UNDECIDED)
            )
            outcome[idx[done]] = code[done].to(torch.int8)
            y_all[:, idx[done]] = y[:, done]
            t_final[idx[done]] = t[done]
            active &= ~done
            h = torch.where(active, h, torch.zeros_like(h))  # frozen until the next compaction
            if int(active.sum()) < 0.75 * active.numel():
                idx, y, k1, h, t = idx[active], y[:, active], k1[:, active], h[active], t[active]
                params = [v[active] for v in params]
                active = torch.ones_like(t, dtype=torch.bool)
    s_final = torch.where(zero_s, torch.zeros_like(s0), torch.exp(y_all[1]))
    return ModeIntegration(
        p=y_all[0],
        s=s_final,
        tau=y_all[2],
        outcome=outcome,
        t_final=t_final,
        steps=steps,
        evaluations=evaluations,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# Phase maps


@dataclass
class PhaseMap:
    """Outcome of every configuration of a Cartesian grid over (η, α_p, β, σ², p(0)).

    ``axes`` maps each axis name to its values; arrays have shape (len(eta), len(alpha_p),
    len(beta), len(sigma2), len(p0)). ``predicted`` is the theory's verdict: with a predictor
    (stop-gradient / EMA) the fixed-τ basin (collapse iff no fixed point or p(0) < p*₋), exact on
    the invariant manifold; for ``direct`` or without a predictor, collapse unless σ² = η = 0.
    """

    axes: dict[str, np.ndarray]
    target: str
    outcome: np.ndarray
    predicted: np.ndarray
    p: np.ndarray
    s: np.ndarray
    tau: np.ndarray
    t_final: np.ndarray
    seconds: float
    s0: str
    predictor: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.outcome.size)

    def agreement(self) -> float:
        """Fraction of decided configurations whose outcome matches the fixed-τ prediction."""
        decided = self.outcome != UNDECIDED
        predicted_code = np.where(self.predicted, COLLAPSED, NON_COLLAPSED)
        return (
            float((self.outcome[decided] == predicted_code[decided]).mean())
            if decided.any()
            else math.nan
        )

    def counts(self) -> dict[str, int]:
        return {name: int((self.outcome == code).sum()) for code, name in OUTCOME_NAMES.items()}

    def rows(self):
        """One dict per configuration (for CSV)."""
        grids = np.meshgrid(*(self.axes[a] for a in PHASE_AXES), indexing="ij")
        flat = [g.reshape(-1) for g in grids]
        out, pred = self.outcome.reshape(-1), self.predicted.reshape(-1)
        for i in range(out.size):
            row = {a: float(flat[k][i]) for k, a in enumerate(PHASE_AXES)}
            row.update(
                outcome=OUTCOME_NAMES[int(out[i])],
                predicted="collapsed" if pred[i] else "non-collapsed",
                p_final=float(self.p.reshape(-1)[i]),
                s_final=float(self.s.reshape(-1)[i]),
                tau_final=float(self.tau.reshape(-1)[i]),
                t_final=float(self.t_final.reshape(-1)[i]),
            )
            yield row

    def write_csv(self, path) -> None:
        """One row per configuration (:meth:`rows`), written atomically."""
        import csv
        import io

        from collapselab.runs import write_atomic

        handle = io.StringIO(newline="")
        writer = None
        for row in self.rows():
            if writer is None:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
        write_atomic(path, handle.getvalue())

    def summary(self) -> dict:
        return {
            "target": self.target,
            "predictor": self.predictor,
            "axes": {k: v.tolist() for k, v in self.axes.items()},
            "configurations": self.size,
            "counts": self.counts(),
            "agreement_with_fixed_tau_theory": self.agreement(),
            "seconds": self.seconds,
            "s0": self.s0,
            **self.extra,
        }

    def write_json(self, path) -> None:
        """:meth:`summary` as JSON, written atomically."""
        from collapselab.runs import write_atomic

        write_atomic(path, json.dumps(self.summary(), indent=2))

    def plot(self, path, x: str = "p0", y: str = "eta") -> None:
        """Save a PNG of the outcome over axes (x, y), other axes at their first value."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap

        for name in (x, y):
            if name not in PHASE_AXES:
                raise InputError(f"plot axis {name!r} is not one of {PHASE_AXES}")
        if x == y:
            raise InputError("plot: x and y must be different axes")
        index = [0] * len(PHASE_AXES)
        index[PHASE_AXES.index(x)] = slice(None)
        index[PHASE_AXES.index(y)] = slice(None)
        grid = self.outcome[tuple(index)].astype(float)
        if PHASE_AXES.index(x) < PHASE_AXES.index(y):
            grid = grid.T
        xs, ys = self.axes[x], self.axes[y]
        fig, ax = plt.subplots(figsize=(5.2, 4.0), dpi=100)
        cmap = ListedColormap(["#c0392b", "#2e86c1", "#bbbbbb"])
        ax.pcolormesh(xs, ys, grid, cmap=cmap, vmin=-0.5, vmax=2.5, shading="nearest")
        fixed = {a: self.axes[a][0] for a in PHASE_AXES if a not in (x, y)}
        if {x, y} == {"p0", "eta"} and self.predictor and self.target != "direct":
            etas = np.linspace(
                ys.min() if y == "eta" else xs.min(), ys.max() if y == "eta" else xs.max(), 200
            )
            fp = fixed_points(etas, fixed.get("sigma2", 0.0))
            pm = fp["p_minus"].numpy()
            pp = fp["p_plus"].numpy()
            if x == "p0":
                ax.plot(pm, etas, "k--", lw=1.2, label="p*₋ (theory)")
                ax.plot(pp, etas, "k:", lw=1.2, label="p*₊ (theory)")
            else:
                ax.plot(etas, pm, "k--", lw=1.2, label="p*₋ (theory)")
                ax.plot(etas, pp, "k:", lw=1.2, label="p*₊ (theory)")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        held = ", ".join(f"{k}={v:g}" for k, v in fixed.items())
        ax.set_title(f"{self.target}: red collapsed, blue not\n{held}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def _axis(values, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{name}: give a number or a 1-D list of values")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: values must be finite")
    return arr


def phase_map(
    *,
    eta=0.05,
    alpha_p=1.0,
    beta=1.0,
    sigma2=0.0,
    p0=0.5,
    s0=None,
    tau0: float = 1.0,
    target: str = "stopgrad",
    predictor: bool = True,
    t_max: float = 1e5,
    dtype: torch.dtype = torch.float64,
    **integrate_kwargs,
) -> PhaseMap:
    """Integrate every configuration of the grid eta × alpha_p × beta × sigma2 × p0 to convergence.

    ``s0=None`` starts each mode on the invariant manifold s(0) = p(0)²/α_p (where the theory's
    basin boundary p*₋ is exact); a number gives the same s(0) for all. ``beta`` only matters for
    ``target="ema"``.
    """
    _check_target(target)
    axes = {
        name: _axis(v, name)
        for name, v in zip(PHASE_AXES, (eta, alpha_p, beta, sigma2, p0), strict=True)
    }
    grids = np.meshgrid(*(axes[a] for a in PHASE_AXES), indexing="ij")
    shape = grids[0].shape
    g = {a: torch.from_numpy(grid.reshape(-1)) for a, grid in zip(PHASE_AXES, grids, strict=True)}
    if s0 is None:
        s_init = g["p0"] ** 2 / g["alpha_p"]
        s_label = "p0^2/alpha_p (invariant manifold)"
    else:
        s_init = torch.full_like(g["p0"], float(s0))
        s_label = str(float(s0))
    res = integrate_modes(
        g["p0"],
        s_init,
        tau0,
        eta=g["eta"],
        alpha_p=g["alpha_p"],
        beta=g["beta"],
        sigma2=g["sigma2"],
        target=target,
        predictor=predictor,
        t_max=t_max,
        dtype=dtype,
        **integrate_kwargs,
    )
    predicted = predicted_collapse(g["p0"], g["eta"], g["sigma2"], tau0).numpy().reshape(shape)
    if target == "direct":  # G < 0 unless σ² = η = 0
        predicted = ((g["sigma2"] > 0) | (g["eta"] > 0)).numpy().reshape(shape)
    elif not predictor:  # p ≡ 1: G = τ − (1+σ²) − η, negative unless σ² = η = 0 (τ = 1)
        predicted = (g["sigma2"] + g["eta"] > 0).numpy().reshape(shape)
    return PhaseMap(
        axes=axes,
        target=target,
        outcome=res.outcome.numpy().reshape(shape),
        predicted=predicted,
        p=res.p.numpy().reshape(shape),
        s=res.s.numpy().reshape(shape),
        tau=res.tau.numpy().reshape(shape),
        t_final=res.t_final.numpy().reshape(shape),
        seconds=res.seconds,
        s0=s_label,
        predictor=predictor,
        extra={"steps": res.steps, "evaluations": res.evaluations},
    )


def rk4_modes(
    field_fn, y0: tuple[torch.Tensor, ...], t_end: float, dt: float = 0.01, num_records: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-step RK4 for a tuple state ẏ = field_fn(*y); returns times (T,) and a stacked
    trajectory (T, len(y0), ...). Used for trajectories and for checking other integrators."""
    if not (t_end > 0 and dt > 0):
        raise InputError(f"t_end and dt must be > 0, got t_end={t_end}, dt={dt}")
    steps = max(1, round(t_end / dt))
    h = t_end / steps
    every = max(1, steps // max(1, num_records))
    y = tuple(torch.as_tensor(v, dtype=torch.float64) for v in y0)
    y = torch.broadcast_tensors(*y)
    times, states = [0.0], [torch.stack(y)]

    def f(state):
        return torch.broadcast_tensors(
            *(torch.as_tensor(v, dtype=torch.float64) for v in field_fn(*state))
        )

    for k in range(1, steps + 1):
        k1 = f(y)
        k2 = f(tuple(a + 0.5 * h * b for a, b in zip(y, k1, strict=True)))
        k3 = f(tuple(a + 0.5 * h * b for a, b in zip(y, k2, strict=True)))
        k4 = f(tuple(a + h * b for a, b in zip(y, k3, strict=True)))
        y = tuple(
            a + h / 6 * (b + 2 * c + 2 * d + e)
            for a, b, c, d, e in zip(y, k1, k2, k3, k4, strict=True)
        )
        if k % every == 0 or k == steps:
            times.append(k * h)
            states.append(torch.stack(y))
    return torch.tensor(times, dtype=torch.float64), torch.stack(states)


def mode_trajectory(
    p0, s0, tau0=1.0, *, t_end: float = 50.0, dt: float = 0.01, num_records: int = 200, **params
) -> dict[str, torch.Tensor]:
    """Trajectories of (p, s, τ) for a batch of modes by fixed-step RK4 (params as :func:`vector_field`)."""

    def field_fn(p, s, tau):
        return vector_field(p, s, tau, **params)

    times, traj = rk4_modes(field_fn, (p0, s0, tau0), t_end, dt, num_records)
    return {"t": times, "p": traj[:, 0], "s": traj[:, 1], "tau": traj[:, 2]}
