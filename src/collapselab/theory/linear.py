"""Linear SSL dynamics: encoder W, optional predictor W_p, target W_a (direct, stop-grad or EMA).

The model (Tian, Chen & Ganguli 2021, arXiv 2102.06810, Sec. 3; docs/theory.md §1). Two views of an
input are x₁ = x̄ + e₁ and x₂ = x̄ + e₂ with x̄ ~ (0, X) the augmentation-averaged input and
e₁, e₂ ~ (0, X′) independent augmentation noise, so

    E[x₁x₁ᵀ] = E[x₂x₂ᵀ] = X + X′,   E[x₂x₁ᵀ] = X.

The loss is J = ½ E‖W_p W x₁ − T x₂‖² where the target T is

* ``direct``   — T = W and gradients flow through both branches (the original objective);
* ``stopgrad`` — T = sg(W) (SimSiam);
* ``ema``      — T = sg(W_a) with Ẇ_a = β(W − W_a) (BYOL).

Without a predictor W_p is the identity and is not trained. Gradient flow with weight decay η and
predictor rate ratio α_p (time measured in units of the learning rate) is

    Ẇ_p = −α_p ∂J/∂W_p − ηW_p,   Ẇ = −∂J/∂W − ηW,   Ẇ_a = β(W − W_a),

which for ``stopgrad``/``ema`` is exactly Tian et al.'s eq. (3):
Ẇ_p = α_p(−W_pW(X+X′) + W_aX)Wᵀ − ηW_p and Ẇ = W_pᵀ(−W_pW(X+X′) + W_aX) − ηW.
For ``direct`` the target branch adds −∂J/∂T = (W_pW E[x₁x₂ᵀ] − W E[x₂x₂ᵀ]) to Ẇ.

Everything is batched: a leading dimension B indexes independent configurations (initial
weights, and optionally X, X′, η, α_p, β). The gradient is written in terms of the three second
moments (C₁₁, C₂₁, C₂₂), so the same code gives the expected flow (population moments) and SGD
(moments of a sampled mini-batch of augmented pairs — the exact mini-batch gradient of the
quadratic loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from collapselab._validation import InputError, as_tensor

TARGET_MODES = ("direct", "stopgrad", "ema")
INTEGRATORS = ("rk4", "adaptive", "sgd")


class LinearState(NamedTuple):
    """Weights of a batch of linear SSL models: W (B, d, n), W_p (B, d, d) or None, W_a (B, d, n) or None."""

    W: torch.Tensor
    Wp: torch.Tensor | None = None
    Wa: torch.Tensor | None = None


class Moments(NamedTuple):
    """Second moments of the two views: C11 = E[x₁x₁ᵀ], C21 = E[x₂x₁ᵀ], C22 = E[x₂x₂ᵀ]; (n, n) or (B, n, n)."""

    C11: torch.Tensor
    C21: torch.Tensor
    C22: torch.Tensor


def _state_map(fn: Callable[..., torch.Tensor], *states: LinearState) -> LinearState:
    """Apply ``fn`` field-wise to states with the same fields present (None stays None)."""
    return LinearState(
        *(None if parts[0] is None else fn(*parts) for parts in zip(*states, strict=True))
    )


def _as_batch_param(
    value: float | torch.Tensor,
    name: str,
    batch: int,
    dtype: torch.dtype,
    *,
    positive: bool = False,
) -> torch.Tensor:
    t = as_tensor(value, name).to(dtype).reshape(-1)
    if t.numel() not in (1, batch):
        raise InputError(
            f"{name}: give a scalar or one value per configuration ({batch}), got {t.numel()} values"
        )
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name}: must be finite, got {t.tolist()}")
    if positive and bool((t <= 0).any()):
        raise InputError(f"{name}: must be > 0, got {t.tolist()}")
    if not positive and bool((t < 0).any()):
        raise InputError(f"{name}: must be >= 0, got {t.tolist()}")
    return (
        t.expand(batch).reshape(batch, 1, 1).clone() if t.numel() == 1 else t.reshape(batch, 1, 1)
    )


def _as_covariance(value, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    t = as_tensor(value, name).to(dtype)
    if t.ndim not in (2, 3) or t.shape[-1] != n or t.shape[-2] != n:
        raise InputError(
            f"{name}: expected shape ({n}, {n}) or (B, {n}, {n}) to match W's input size n={n}, "
            f"got {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name}: contains NaN or Inf")
    if not torch.allclose(t, t.transpose(-1, -2), atol=1e-10 * (1 + float(t.abs().max()))):
        raise InputError(
            f"{name}: must be symmetric (a covariance); symmetrise it with (C + C.T) / 2"
        )
    if float(torch.linalg.eigvalsh(t).min()) < -1e-9 * (1 + float(t.abs().max())):
        raise InputError(
            f"{name}: must be positive semi-definite (a covariance); it has a negative eigenvalue"
        )
    return t


@dataclass
class LinearSSL:
    """Expected-gradient dynamics of a linear SSL model (see the module docstring for the equations).

    Args:
        X: (n, n) or (B, n, n) covariance of the augmentation-averaged input x̄.
        X_prime: (n, n) or (B, n, n) mean covariance of the augmentation noise.
        target: ``"direct"``, ``"stopgrad"`` or ``"ema"``.
        predictor: train a linear predictor W_p (True) or use the identity (False).
        weight_decay, alpha_p, beta: η, α_p, β — scalars or one value per configuration.
        batch: number of configurations B the per-configuration parameters are expanded to.
    """

    X: torch.Tensor
    X_prime: torch.Tensor
    target: str = "stopgrad"
    predictor: bool = True
    weight_decay: float | torch.Tensor = 0.0
    alpha_p: float | torch.Tensor = 1.0
    beta: float | torch.Tensor = 1.0
    batch: int = 1
    dtype: torch.dtype = torch.float64
    _eta: torch.Tensor = field(init=False, repr=False)
    _alpha: torch.Tensor = field(init=False, repr=False)
    _beta: torch.Tensor = field(init=False, repr=False)
    _moments: Moments | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.target not in TARGET_MODES:
            raise InputError(f"target={self.target!r} is not one of {TARGET_MODES}")
        X = as_tensor(self.X, "X")
        n = X.shape[-1] if X.ndim >= 2 else 0
        self.X = _as_covariance(X, "X", n, self.dtype)
        self.X_prime = _as_covariance(self.X_prime, "X_prime", n, self.dtype)
        for cov, name in ((self.X, "X"), (self.X_prime, "X_prime")):
            if cov.ndim == 3 and cov.shape[0] not in (1, self.batch):
                raise InputError(
                    f"{name}: batch dimension {cov.shape[0]} does not match batch={self.batch}"
                )
        self._eta = _as_batch_param(self.weight_decay, "weight_decay", self.batch, self.dtype)
        self._alpha = _as_batch_param(
            self.alpha_p, "alpha_p", self.batch, self.dtype, positive=True
        )
        self._beta = _as_batch_param(self.beta, "beta", self.batch, self.dtype, positive=True)

    @property
    def n(self) -> int:
        return int(self.X.shape[-1])

    def population_moments(self) -> Moments:
        """Moments of the data model: C11 = C22 = X + X′, C21 = X."""
        if self._moments is None:
            total = self.X + self.X_prime
            self._moments = Moments(total, self.X, total)
        return self._moments

    def check_state(self, state: LinearState) -> LinearState:
        """Validate shapes of a state against this model (B, d, n) and return it in float64."""
        W = as_tensor(state.W, "W").to(self.dtype)
        if W.ndim != 3 or W.shape[0] != self.batch or W.shape[2] != self.n:
            raise InputError(
                f"W: expected shape (B={self.batch}, d, n={self.n}), got {tuple(W.shape)}"
            )
        d = W.shape[1]
        Wp = Wa = None
        if self.predictor:
            if state.Wp is None:
                raise InputError(
                    "Wp: the model has a predictor; give W_p of shape (B, d, d) or set predictor=False"
                )
            Wp = as_tensor(state.Wp, "Wp").to(self.dtype)
            if tuple(Wp.shape) != (self.batch, d, d):
                raise InputError(
                    f"Wp: expected shape ({self.batch}, {d}, {d}), got {tuple(Wp.shape)}"
                )
        if self.target == "ema":
            Wa = W.clone() if state.Wa is None else as_tensor(state.Wa, "Wa").to(self.dtype)
            if Wa.shape != W.shape:
                raise InputError(
                    f"Wa: expected the shape of W {tuple(W.shape)}, got {tuple(Wa.shape)}"
                )
        return LinearState(W, Wp, Wa)

    def gradients(self, state: LinearState, moments: Moments | None = None) -> LinearState:
        """∂J/∂W and ∂J/∂W_p (the semi-gradients for stopgrad/ema); the Wa slot is None."""
        C11, C21, C22 = self.population_moments() if moments is None else moments
        W, Wp = state.W, state.Wp
        T = state.Wa if self.target == "ema" else W
        A = W if Wp is None else Wp @ W
        R1 = A @ C11 - T @ C21  # E[r x₁ᵀ], r = W_p W x₁ − T x₂
        grad_W = R1 if Wp is None else Wp.transpose(-1, -2) @ R1
        if self.target == "direct":  # gradient through the target branch: −E[r x₂ᵀ]
            grad_W = grad_W - (A @ C21.transpose(-1, -2) - W @ C22)
        grad_Wp = None if Wp is None else R1 @ W.transpose(-1, -2)
        return LinearState(grad_W, grad_Wp, None)

    def vector_field(self, state: LinearState, moments: Moments | None = None) -> LinearState:
        """Time derivative of (W, W_p, W_a) under gradient flow with weight decay."""
        grads = self.gradients(state, moments)
        dW = -grads.W - self._eta * state.W
        dWp = None if state.Wp is None else -self._alpha * grads.Wp - self._eta * state.Wp
        dWa = None if state.Wa is None else self._beta * (state.W - state.Wa)
        return LinearState(dW, dWp, dWa)

    def loss(self, state: LinearState, moments: Moments | None = None) -> torch.Tensor:
        """J = ½E‖W_pWx₁ − Tx₂‖² per configuration, shape (B,)."""
        C11, C21, C22 = self.population_moments() if moments is None else moments
        T = state.Wa if self.target == "ema" else state.W
        A = state.W if state.Wp is None else state.Wp @ state.W
        quad = (A @ C11 * A).sum((-1, -2)) - 2 * (A @ C21.transpose(-1, -2) * T).sum((-1, -2))
        return 0.5 * (quad + (T @ C22 * T).sum((-1, -2)))


def isotropic_data(
    n: int, sigma2: float = 0.0, *, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The data model of Tian et al. Sec. 4: X = I, X′ = σ²I, both (n, n)."""
    if n < 1:
        raise InputError(f"n: input dimension must be >= 1, got {n}")
    if not math.isfinite(sigma2) or sigma2 < 0:
        raise InputError(
            f"sigma2: augmentation variance must be a finite number >= 0, got {sigma2}"
        )
    eye = torch.eye(n, dtype=dtype)
    return eye, sigma2 * eye


def _psd_sqrt(C: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(C)
    return vecs * vals.clamp_min(0).sqrt().unsqueeze(-2)


def sample_pairs(
    X: torch.Tensor,
    X_prime: torch.Tensor,
    num_pairs: int,
    *,
    batch: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw augmented pairs x₁ = x̄ + e₁, x₂ = x̄ + e₂ with x̄ ~ N(0, X), eᵢ ~ N(0, X′); each (batch, num_pairs, n)."""
    n = X.shape[-1]
    root_X, root_Xp = _psd_sqrt(X), _psd_sqrt(X_prime)
    shape = (batch, num_pairs, n)
    base = torch.randn(shape, generator=generator, dtype=X.dtype) @ root_X.transpose(-1, -2)
    e1 = torch.randn(shape, generator=generator, dtype=X.dtype) @ root_Xp.transpose(-1, -2)
    e2 = torch.randn(shape, generator=generator, dtype=X.dtype) @ root_Xp.transpose(-1, -2)
    return base + e1, base + e2


def sample_moments(x1: torch.Tensor, x2: torch.Tensor) -> Moments:
    """Mini-batch second moments (C11, C21, C22) of sampled pairs of shape (B, N, n)."""
    num = x1.shape[-2]
    return Moments(
        x1.transpose(-1, -2) @ x1 / num,
        x2.transpose(-1, -2) @ x1 / num,
        x2.transpose(-1, -2) @ x2 / num,
    )


# ---------------------------------------------------------------------------------------------
# Integrators


def rk4_step(f: Callable[[LinearState], LinearState], y: LinearState, h: float) -> LinearState:
    """One classical Runge–Kutta step of size h for ẏ = f(y)."""
    half = 0.5 * h
    k1 = f(y)
    k2 = f(_state_map(lambda a, k: torch.add(a, k, alpha=half), y, k1))
    k3 = f(_state_map(lambda a, k: torch.add(a, k, alpha=half), y, k2))
    k4 = f(_state_map(lambda a, k: torch.add(a, k, alpha=h), y, k3))
    return _state_map(
        lambda a, b, c, d, e: torch.add(a, b + 2 * (c + d) + e, alpha=h / 6), y, k1, k2, k3, k4
    )


def _record_plan(t_end: float, dt: float, num_records: int) -> tuple[int, int]:
    steps = max(1, round(t_end / dt))
    every = max(1, steps // max(1, num_records))
    return steps, every


STEP_GROWTH_LIMIT = 2.0
"""A step that moves a configuration's weights by more than this × (1 + their norm) has left the
flow: RK4 on a decaying mode moves it by less than 2× its size inside its stability region."""


class DivergenceError(InputError):
    """The integration blew up (NaN/Inf, or a step far larger than the weights): the step size or
    the parameters are too large for the flow. Nothing is classified from such a run.

    Attributes: ``step`` and ``steps`` (``None`` for the adaptive solver), ``time``, ``config``
    (the first diverging configuration), ``detail`` (what was seen), ``dt`` (the requested step,
    ``None`` for the adaptive solver), ``h`` (the step used) and ``rate`` (how fast the expected
    flow moves the initial weights, per unit time, relative to their size).
    """

    def __init__(self, *, step: int | None, steps: int | None, time: float, config: int,
                 detail: str, dt: float | None, h: float | None, rate: float) -> None:
        self.step, self.steps, self.time, self.config = step, steps, time, config
        self.detail, self.dt, self.h, self.rate = detail, dt, h, rate
        super().__init__(self.describe())

    def describe(self, names: dict[str, str] | None = None) -> str:
        """The one-line message, naming the parameters to lower (``dt``, ``weight_decay``,
        ``sigma2``, ``init_scale``) as in ``names`` (default: the API's own names)."""
        n = {key: (names or {}).get(key, key) for key in ("dt", "weight_decay", "sigma2", "init_scale")}
        where = f"at t = {self.time:.4g}" if self.step is None else (
            f"at step {self.step} of {self.steps} (t = {self.time:.4g})"
        )
        slower = f"smaller {n['weight_decay']}, {n['sigma2']} or {n['init_scale']}"
        if self.dt is None:
            fix = f"the flow is too fast or unstable here: use {slower}"
        else:
            step = f"{self.dt:.3g}" if self.h == self.dt else f"{self.dt:.3g}, a step of {self.h:.3g} here"
            limit = 0.5 / self.rate if self.rate > 0 else math.inf
            fix = f"lower {n['dt']} (now {step})"
            if self.h is not None and limit < self.h:
                fix += f" to about {limit:.2g} or less (the flow's initial rate is ~{self.rate:.3g} per unit time)"
            fix += f", or slow the flow ({slower})"
        return f"the simulation diverged {where}, configuration {self.config}: {self.detail}; {fix}"


def _per_config_norm(state: LinearState) -> torch.Tensor:
    """‖(W, W_p, W_a)‖ per configuration, shape (B,)."""
    return sum(t.flatten(1).square().sum(1) for t in state if t is not None).sqrt()


def _flow_rate(model: LinearSSL, y0: LinearState) -> float:
    """max over configurations of ‖f(y0)‖ / (1 + ‖y0‖): the expected flow's speed at the start."""
    with torch.no_grad():
        rate = _per_config_norm(model.vector_field(y0)) / (1 + _per_config_norm(y0))
    rate = rate[torch.isfinite(rate)]
    return float(rate.max()) if rate.numel() else math.inf


def _check_step(model: LinearSSL, y0: LinearState, before: LinearState, after: LinearState,
                k: int, steps: int, h: float, dt: float) -> None:
    """Raise :class:`DivergenceError` if ``after`` is non-finite or ``before → after`` is a
    blow-up (a change of more than STEP_GROWTH_LIMIT × (1 + ‖before‖))."""
    size = _per_config_norm(before)
    change = _per_config_norm(_state_map(torch.sub, after, before))
    bad = ~torch.isfinite(change) | (change > STEP_GROWTH_LIMIT * (1 + size))
    if not bool(bad.any()):
        return
    b = int(bad.nonzero()[0, 0])
    if not math.isfinite(float(change[b])):
        detail = "the weights became NaN/Inf"
    else:
        detail = (f"one step changed the weights by {float(change[b]):.3g} "
                  f"(their norm was {float(size[b]):.3g})")
    raise DivergenceError(step=k, steps=steps, time=k * h, config=b, detail=detail, dt=dt, h=h,
                          rate=_flow_rate(model, y0))


def integrate_rk4(
    model: LinearSSL, y0: LinearState, t_end: float, dt: float = 0.01, num_records: int = 200
) -> tuple[torch.Tensor, list[LinearState]]:
    """Expected gradient flow by RK4 with a fixed step; returns record times and states.

    Raises :class:`DivergenceError` at the first step that blows up (see :func:`_check_step`).
    """
    y0 = model.check_state(y0)
    steps, every = _record_plan(t_end, dt, num_records)
    h = t_end / steps
    y, times, states = y0, [0.0], [y0]
    for k in range(1, steps + 1):
        y_next = rk4_step(model.vector_field, y, h)
        _check_step(model, y0, y, y_next, k, steps, h, dt)
        y = y_next
        if k % every == 0 or k == steps:
            times.append(k * h)
            states.append(y)
    return torch.tensor(times, dtype=torch.float64), states


ADAPTIVE_MAX_EVALUATIONS = 200_000
"""The adaptive solver stops (with a DivergenceError) after this many vector-field evaluations
(about 20 s): a flow that needs more is too stiff or explosive for an explicit method. A flow
whose initial speed × t_end already needs more (DOP853 takes ≳ 2·rate·t_end evaluations on a
stiff decaying flow) is refused before integrating."""


def integrate_adaptive(
    model: LinearSSL,
    y0: LinearState,
    t_end: float,
    num_records: int = 200,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    method: str = "DOP853",
    max_evaluations: int = ADAPTIVE_MAX_EVALUATIONS,
) -> tuple[torch.Tensor, list[LinearState]]:
    """Expected gradient flow with SciPy's adaptive solver (``solve_ivp``, default DOP853).

    Raises :class:`DivergenceError` when the state becomes NaN/Inf, the solver gives up, or it
    needs more than ``max_evaluations`` vector-field evaluations (a stiff or exploding flow).
    """
    from scipy.integrate import solve_ivp

    y0 = model.check_state(y0)
    calls = [0]

    def diverged(t: float, detail: str) -> DivergenceError:
        return DivergenceError(step=None, steps=None, time=t, config=0, detail=detail, dt=None,
                               h=None, rate=_flow_rate(model, y0))

    too_many = f"the adaptive solver would need more than {max_evaluations} evaluations (a stiff or exploding flow)"
    if 2 * _flow_rate(model, y0) * t_end > max_evaluations:
        raise diverged(0.0, too_many)

    def rhs(t: float, vec: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if not np.isfinite(vec).all():
            raise diverged(t, "the weights became NaN/Inf")
        if calls[0] > max_evaluations:
            raise diverged(t, too_many)
        return flatten_state(model.vector_field(unflatten_state(torch.from_numpy(vec), y0))).numpy()

    t_eval = np.linspace(0.0, t_end, max(2, num_records + 1))
    sol = solve_ivp(
        rhs,
        (0.0, t_end),
        flatten_state(y0).numpy(),
        method=method,
        t_eval=t_eval,
        rtol=rtol,
        atol=atol,
    )
    if not sol.success or not np.isfinite(sol.y).all():
        t_fail = float(sol.t[-1]) if sol.t.size else 0.0
        raise diverged(t_fail, f"the adaptive solver failed ({sol.message})")
    states = [
        unflatten_state(torch.from_numpy(sol.y[:, k].copy()), y0) for k in range(sol.y.shape[1])
    ]
    return torch.from_numpy(sol.t), states


def integrate_sgd(
    model: LinearSSL,
    y0: LinearState,
    t_end: float,
    dt: float = 0.01,
    batch_size: int = 256,
    num_records: int = 200,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[LinearState]]:
    """SGD on sampled augmented pairs with learning rate dt for t_end/dt steps (EMA updated per step).

    Each step draws ``batch_size`` fresh pairs per configuration and applies
    θ ← θ + dt·(mini-batch vector field); as dt → 0 with dt·steps fixed this follows the flow.
    Raises :class:`DivergenceError` at the first step that blows up (see :func:`_check_step`).
    """
    if batch_size < 1:
        raise InputError(f"batch_size: need at least one sampled pair per step, got {batch_size}")
    y0 = model.check_state(y0)
    steps, every = _record_plan(t_end, dt, num_records)
    h = t_end / steps
    y, times, states = y0, [0.0], [y0]
    for k in range(1, steps + 1):
        x1, x2 = sample_pairs(
            model.X, model.X_prime, batch_size, batch=model.batch, generator=generator
        )
        velocity = model.vector_field(y, sample_moments(x1, x2))
        y_next = _state_map(lambda a, v: a + h * v, y, velocity)
        _check_step(model, y0, y, y_next, k, steps, h, dt)
        y = y_next
        if k % every == 0 or k == steps:
            times.append(k * h)
            states.append(y)
    return torch.tensor(times, dtype=torch.float64), states


# ---------------------------------------------------------------------------------------------
# Per-mode read-out and the public simulate()


def mode_quantities(state: LinearState) -> dict[str, torch.Tensor]:
    """Per-mode (s_j, p_j, τ_j) in the eigenbasis of F = WWᵀ, modes sorted by s_j descending.

    s_j = eigenvalues of F (squared singular values of W); p_j = u_jᵀW_pu_j (1 without predictor); τ_j = u_jᵀW_aWᵀu_j / s_j
    (1 for direct/stopgrad; NaN where s_j = 0). Each (B, d).
    """
    W = state.W
    U, sv, _ = torch.linalg.svd(W, full_matrices=True)  # accurate for tiny singular values
    d = W.shape[-2]
    if sv.shape[-1] < d:
        sv = torch.cat([sv, sv.new_zeros(*sv.shape[:-1], d - sv.shape[-1])], dim=-1)
    s = sv.square()
    if state.Wp is None:
        p = torch.ones_like(s)
    else:
        p = (U * (state.Wp @ U)).sum(-2)
    if state.Wa is None:
        tau = torch.ones_like(s)
    else:
        a = (U * (state.Wa @ W.transpose(-1, -2) @ U)).sum(-2)
        tau = torch.where(
            s > 0, a / torch.where(s > 0, s, torch.ones_like(s)), torch.full_like(s, math.nan)
        )
    return {"s": s, "p": p, "tau": tau}


@dataclass
class SimulationResult:
    """Trajectories and per-mode outcome of :func:`simulate`.

    Attributes:
        times: (T,) record times (in units of learning-rate × steps).
        singular_values: (T, B, d) singular values of W, descending (√s_j).
        predictor_eigenvalues: (T, B, d) complex eigenvalues of W_p (ones without predictor).
        s, p, tau: (T, B, d) per-mode quantities (see :func:`mode_quantities`).
        loss: (T, B) the objective J.
        states: the recorded :class:`LinearState` objects.
        outcome: B lists of d strings, ``"collapsed"`` or ``"non-collapsed"``.
        limit: final (s, p, τ) per mode, each (B, d).
        converged: (B,) whether the final vector field is small (‖Ẇ‖ ≤ tol·(1 + ‖W‖)).
    """

    times: torch.Tensor
    singular_values: torch.Tensor
    predictor_eigenvalues: torch.Tensor
    s: torch.Tensor
    p: torch.Tensor
    tau: torch.Tensor
    loss: torch.Tensor
    states: list[LinearState]
    outcome: list[list[str]]
    limit: dict[str, torch.Tensor]
    converged: torch.Tensor
    model: LinearSSL

    def summary(self) -> dict:
        """JSON-able summary: per configuration, per mode outcome and limit."""
        return {
            "t_end": float(self.times[-1]),
            "configurations": [
                {
                    "converged": bool(self.converged[b]),
                    "modes": [
                        {
                            "outcome": self.outcome[b][j],
                            "s": float(self.limit["s"][b, j]),
                            "p": float(self.limit["p"][b, j]),
                            "tau": float(self.limit["tau"][b, j]),
                        }
                        for j in range(len(self.outcome[b]))
                    ],
                }
                for b in range(len(self.outcome))
            ],
        }


def simulate(
    target: str = "stopgrad",
    *,
    predictor: bool = True,
    n: int = 4,
    d: int = 4,
    X=None,
    X_prime=None,
    sigma2: float = 0.0,
    weight_decay: float | torch.Tensor = 0.0,
    alpha_p: float | torch.Tensor = 1.0,
    beta: float | torch.Tensor = 1.0,
    num_configs: int = 1,
    W0=None,
    Wp0=None,
    Wa0=None,
    init_scale: float = 1.0,
    t_end: float = 50.0,
    integrator: str = "rk4",
    dt: float = 0.05,
    batch_size: int = 256,
    num_records: int = 200,
    collapse_tol: float = 1e-6,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> SimulationResult:
    """Simulate linear SSL dynamics for a batch of configurations and classify each mode.

    Args:
        target: ``"direct"`` (no stop-gradient), ``"stopgrad"`` or ``"ema"``.
        predictor: learn a linear predictor W_p (else identity).
        n, d: input and output dimension (ignored where X / W0 fix them).
        X, X_prime: data model covariances; default X = I, X′ = σ²I (``sigma2``).
        weight_decay, alpha_p, beta: η, α_p, β; scalars or (num_configs,) tensors.
        W0, Wp0, Wa0: initial weights, (B, d, n), (B, d, d), (B, d, n); default Gaussian with
            entry std ``init_scale/√n`` for W and ``init_scale/√d`` for W_p, and W_a = W.
        t_end: integration time; integrator: ``"rk4"`` (fixed step ``dt``), ``"adaptive"``
            (SciPy DOP853) or ``"sgd"`` (learning rate ``dt``, ``batch_size`` pairs per step).
        collapse_tol: a mode is collapsed when s_j(t_end) ≤ collapse_tol · mean_j s_j(0).

    Returns:
        :class:`SimulationResult` with trajectories and the per-mode outcome.

    Raises:
        InputError: for invalid arguments, and :class:`DivergenceError` (an ``InputError``) when
        the integration blows up (NaN/Inf, or one step far larger than the weights); the message
        gives the step and time and says to lower ``dt`` or slow the flow. A diverged run is
        never classified.

    Example:
        >>> res = simulate("stopgrad", predictor=False, sigma2=0.5, t_end=40)
        >>> res.outcome[0]
        ['collapsed', 'collapsed', 'collapsed', 'collapsed']
    """
    if target not in TARGET_MODES:
        raise InputError(f"target={target!r} is not one of {TARGET_MODES}")
    if integrator not in INTEGRATORS:
        raise InputError(f"integrator={integrator!r} is not one of {INTEGRATORS}")
    for value, name in ((t_end, "t_end"), (dt, "dt"), (collapse_tol, "collapse_tol")):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise InputError(f"{name}: must be a finite number > 0, got {value!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    if W0 is not None:
        W0 = as_tensor(W0, "W0").to(torch.float64)
        if W0.ndim == 2:
            W0 = W0.unsqueeze(0)
        if W0.ndim != 3:
            raise InputError(f"W0: expected shape (B, d, n) or (d, n), got {tuple(W0.shape)}")
        num_configs, d, n = W0.shape
    if X is not None:
        n = as_tensor(X, "X").shape[-1]
    if n < 1 or d < 1 or num_configs < 1:
        raise InputError(
            f"need n >= 1, d >= 1 and num_configs >= 1; got n={n}, d={d}, num_configs={num_configs}"
        )
    iso_X, iso_Xp = isotropic_data(n, sigma2)
    model = LinearSSL(
        iso_X if X is None else X,
        iso_Xp if X_prime is None else X_prime,
        target=target,
        predictor=predictor,
        weight_decay=weight_decay,
        alpha_p=alpha_p,
        beta=beta,
        batch=num_configs,
    )
    if W0 is None:
        W0 = (
            torch.randn(num_configs, d, n, generator=generator, dtype=torch.float64)
            * init_scale
            / math.sqrt(n)
        )
    if predictor and Wp0 is None:
        Wp0 = (
            torch.randn(num_configs, d, d, generator=generator, dtype=torch.float64)
            * init_scale
            / math.sqrt(d)
        )
    elif Wp0 is not None:
        Wp0 = as_tensor(Wp0, "Wp0").to(torch.float64)
        Wp0 = Wp0.unsqueeze(0).expand(num_configs, -1, -1).clone() if Wp0.ndim == 2 else Wp0
    y0 = model.check_state(LinearState(W0, Wp0 if predictor else None, Wa0))

    if integrator == "rk4":
        times, states = integrate_rk4(model, y0, t_end, dt, num_records)
    elif integrator == "adaptive":
        times, states = integrate_adaptive(model, y0, t_end, num_records)
    else:
        times, states = integrate_sgd(model, y0, t_end, dt, batch_size, num_records, generator)

    modes = [mode_quantities(st) for st in states]
    s = torch.stack([m["s"] for m in modes])
    p = torch.stack([m["p"] for m in modes])
    tau = torch.stack([m["tau"] for m in modes])
    if predictor:
        pred_eigs = torch.stack([torch.linalg.eigvals(st.Wp) for st in states])
    else:
        pred_eigs = torch.ones_like(s, dtype=torch.complex128)
    final = states[-1]
    scale = s[0].mean(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    collapsed = s[-1] <= collapse_tol * scale
    outcome = [["collapsed" if c else "non-collapsed" for c in row] for row in collapsed.tolist()]
    velocity = model.vector_field(final)
    speed = sum(v.flatten(1).norm(dim=1) for v in velocity if v is not None)
    size = sum(w.flatten(1).norm(dim=1) for w in final if w is not None)
    converged = speed <= 1e-6 * (1 + size)
    return SimulationResult(
        times=times,
        singular_values=s.sqrt(),
        predictor_eigenvalues=pred_eigs,
        s=s,
        p=p,
        tau=tau,
        loss=torch.stack([model.loss(st) for st in states]),
        states=states,
        outcome=outcome,
        limit={"s": s[-1], "p": p[-1], "tau": tau[-1]},
        converged=converged,
        model=model,
    )


def flatten_state(state: LinearState) -> torch.Tensor:
    """Concatenate the present fields of a state (batch of one or more) into one vector."""
    return torch.cat([t.reshape(-1) for t in state if t is not None])


def unflatten_state(vec: torch.Tensor, like: LinearState) -> LinearState:
    """Inverse of :func:`flatten_state` for states shaped like ``like``."""
    out, offset = [], 0
    for t in like:
        if t is None:
            out.append(None)
            continue
        out.append(vec[offset : offset + t.numel()].reshape(t.shape))
        offset += t.numel()
    return LinearState(*out)


def state_jacobian(model: LinearSSL, state: LinearState) -> torch.Tensor:
    """Jacobian of the flattened vector field at ``state`` (automatic differentiation), (N, N)."""

    def field_flat(vec: torch.Tensor) -> torch.Tensor:
        return flatten_state(model.vector_field(unflatten_state(vec, state)))

    return torch.autograd.functional.jacobian(field_flat, flatten_state(state))


def newton_polish(
    model: LinearSSL, state: LinearState, iterations: int = 20, tol: float = 1e-13
) -> tuple[LinearState, float]:
    """Refine an approximate equilibrium by Gauss–Newton on f(θ) = 0 (least squares, so the
    zero modes of continuous symmetries are harmless). Returns the state and the final ‖f‖."""
    vec = flatten_state(state)
    residual = float(flatten_state(model.vector_field(state)).norm())
    for _ in range(iterations):
        if residual < tol:
            break
        current = unflatten_state(vec, state)
        jac = state_jacobian(model, current)
        f = flatten_state(model.vector_field(current))
        vec = vec - torch.linalg.lstsq(jac, f.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
        residual = float(flatten_state(model.vector_field(unflatten_state(vec, state))).norm())
    return unflatten_state(vec, state), residual
