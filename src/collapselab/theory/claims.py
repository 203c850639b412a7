"""The claims ledger: each published statement about collapse as a runnable, falsifiable check.

A :class:`Claim` has an id, a source, a statement and a check. The check computes *predicted*
values (from the theory's formula) and *measured* values (from an independent computation:
integration, sampling, autograd, a library function) and returns them as :class:`Comparison`
rows with a tolerance; the claim passes when every row does. Every check also takes
``counterfactual=True``, which perturbs the prediction (a wrong exponent, factor or threshold) or
the model (a mechanism removed) and re-runs the *same* rows — same names, relations and
tolerances, never a negated relation (documented in ``Claim.counterfactual``). The test suite
asserts that this makes the claim fail, so no check is vacuous.

Add a claim (e.g. a training-level one in a later module) with the decorator::

    from collapselab.theory.claims import Comparison, claim

    @claim("simsiam-no-predictor-collapses", source="Chen & He 2021, Table 1",
           statement="SimSiam without predictor collapses on digits.",
           counterfactual="predicts a stable rank above 10")
    def _check(counterfactual: bool) -> list[Comparison]:
        measured = ...                         # run something
        bound = 10.0 if counterfactual else 2.0
        return [Comparison("stable rank after 5 epochs", bound, measured, relation="<")]

``collapselab verify`` runs every registered claim of kind ``"theory"`` and exits non-zero if
one fails; claims registered with ``kind="training"`` (:mod:`collapselab.theory.training_claims`,
which train models) run with ``collapselab verify --training``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch

from collapselab._validation import InputError

RELATIONS = ("≈", "<", ">")


@dataclass(frozen=True)
class Comparison:
    """One predicted-versus-measured row.

    ``relation``: ``"≈"`` passes when |measured − predicted| ≤ tolerance (× |predicted| when
    ``relative``); ``"<"`` / ``">"`` pass when measured < predicted / measured > predicted
    (the prediction is a bound; the tolerance is unused).
    """

    name: str
    predicted: float
    measured: float
    tolerance: float = 0.0
    relation: str = "≈"
    relative: bool = False

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise InputError(
                f"Comparison {self.name!r}: relation must be one of {RELATIONS}, got {self.relation!r}"
            )

    @property
    def passed(self) -> bool:
        p, m = float(self.predicted), float(self.measured)
        if not (math.isfinite(m) and math.isfinite(p)):
            return False
        if self.relation == "<":
            return m < p
        if self.relation == ">":
            return m > p
        scale = abs(p) if self.relative else 1.0
        return abs(m - p) <= self.tolerance * scale


@dataclass(frozen=True)
class ClaimResult:
    """Outcome of running one claim."""

    claim_id: str
    source: str
    statement: str
    comparisons: tuple[Comparison, ...]
    seconds: float
    counterfactual: bool = False
    error: str | None = None
    kind: str = "theory"

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and len(self.comparisons) > 0
            and all(c.passed for c in self.comparisons)
        )

    def to_dict(self) -> dict:
        return {
            "id": self.claim_id,
            "kind": self.kind,
            "source": self.source,
            "statement": self.statement,
            "passed": self.passed,
            "seconds": round(self.seconds, 4),
            "counterfactual": self.counterfactual,
            "error": self.error,
            "comparisons": [{**asdict(c), "passed": c.passed} for c in self.comparisons],
        }


@dataclass(frozen=True)
class Claim:
    """A published statement with a check ``check(counterfactual: bool) -> list[Comparison]``."""

    id: str
    source: str
    statement: str
    check: Callable[[bool], list[Comparison]] = field(repr=False)
    counterfactual: str = ""
    slow: bool = False
    # "theory" (fast, numerical) or "training" (trains models; ``collapselab verify --training``)
    kind: str = "theory"

    def run(self, counterfactual: bool = False) -> ClaimResult:
        """Run the check; exceptions become a failed result carrying the error message."""
        start = time.perf_counter()
        try:
            rows = tuple(self.check(counterfactual))
            error = None
        except Exception as err:  # a broken check is a failed claim, reported, not a crash
            rows, error = (), f"{type(err).__name__}: {err}"
        return ClaimResult(
            self.id,
            self.source,
            self.statement,
            rows,
            time.perf_counter() - start,
            counterfactual,
            error,
            self.kind,
        )


_REGISTRY: dict[str, Claim] = {}


def register_claim(new: Claim, *, replace: bool = False) -> Claim:
    """Add a claim to the ledger (ids are unique; pass ``replace=True`` to redefine one)."""
    if not new.id or any(ch.isspace() for ch in new.id):
        raise InputError(f"claim id must be a non-empty string without spaces, got {new.id!r}")
    if new.id in _REGISTRY and not replace:
        raise InputError(
            f"claim id {new.id!r} is already registered; choose another id or pass replace=True"
        )
    _REGISTRY[new.id] = new
    return new


def unregister_claim(claim_id: str) -> Claim:
    """Remove a claim from the ledger and return it (e.g. a temporary claim in a test)."""
    get_claim(claim_id)
    return _REGISTRY.pop(claim_id)


def claim(
    id: str,
    *,
    source: str,
    statement: str,
    counterfactual: str,
    slow: bool = False,
    kind: str = "theory",
):
    """Decorator form of :func:`register_claim` for a check function."""

    def wrap(fn: Callable[[bool], list[Comparison]]) -> Callable[[bool], list[Comparison]]:
        register_claim(Claim(id, source, statement, fn, counterfactual, slow, kind))
        return fn

    return wrap


def all_claims(kind: str | None = None) -> list[Claim]:
    """Registered claims in registration order (only those of ``kind`` when given)."""
    return [c for c in _REGISTRY.values() if kind is None or c.kind == kind]


def get_claim(claim_id: str) -> Claim:
    try:
        return _REGISTRY[claim_id]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(claim_id, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(
            f"unknown claim id {claim_id!r}{hint} (known: {', '.join(_REGISTRY)})"
        ) from None


def verify(
    ids: Iterable[str] | None = None,
    *,
    counterfactual: bool = False,
    include_slow: bool = True,
    kind: str | None = "theory",
) -> list[ClaimResult]:
    """Run the given claims (default: every registered claim of ``kind``; ``kind=None``: all
    kinds) and return their results. Named ``ids`` run whatever their kind."""
    chosen = [get_claim(i) for i in ids] if ids is not None else all_claims(kind)
    return [c.run(counterfactual) for c in chosen if include_slow or ids is not None or not c.slow]


def format_table(results: list[ClaimResult]) -> str:
    """Plain-text table: one block per claim, one line per comparison."""
    lines = []
    for res in results:
        status = "PASS" if res.passed else "FAIL"
        tag = f" [{res.kind}]" if res.kind != "theory" else ""
        lines.append(f"[{status}] {res.claim_id}{tag}  ({res.seconds:.2f} s)  — {res.source}")
        lines.append(f"       {res.statement}")
        if res.error:
            lines.append(f"       error: {res.error}")
        for c in res.comparisons:
            mark = "ok " if c.passed else "BAD"
            if c.relation == "≈":
                tol = f"± {c.tolerance:.1e}{' rel' if c.relative else ''}"
                lines.append(
                    f"       {mark} {c.name}: predicted {c.predicted:.6g}, measured {c.measured:.6g} ({tol})"
                )
            else:
                lines.append(
                    f"       {mark} {c.name}: measured {c.measured:.6g} {c.relation} {c.predicted:.6g}"
                )
    n_pass = sum(r.passed for r in results)
    lines.append(f"{n_pass}/{len(results)} claims pass")
    return "\n".join(lines)


# =============================================================================================
# The core theory claims (sources: the papers in docs/theory.md, or collapselab's own
# derivation where a claim's source says so)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_spd(n: int, gen: torch.Generator, floor: float = 0.1) -> torch.Tensor:
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a @ a.T / n + floor * torch.eye(n, dtype=torch.float64)


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q


@claim(
    "naive-alignment-closed-form",
    source="collapselab (docs/theory.md §3; gradient flow of the naive loss L = E‖Wx − Wx⁺‖² for a "
    "linear encoder, our derivation)",
    statement="Gradient flow of naive alignment gives W(t) = W(0)·exp(−2ηSt): the part of W on "
    "range(S) decays, the part on null(S) is preserved.",
    counterfactual="W(t) = W(0)·exp(−ηSt) with every singular value decaying (null part → 0)",
)
def _check_naive_alignment(counterfactual: bool) -> list[Comparison]:
    from collapselab.theory.linear import LinearSSL, LinearState, integrate_rk4

    gen = _gen(1)
    n, d, lr, t = 5, 3, 0.1, 4.0
    basis = _orthonormal(n, n, gen)
    lam = torch.tensor([1.5, 0.8, 0.3, 0.0, 0.0], dtype=torch.float64)  # rank-deficient S
    S = basis @ torch.diag(lam) @ basis.T
    null_proj = basis[:, 3:] @ basis[:, 3:].T
    W0 = torch.randn(1, d, n, generator=gen, dtype=torch.float64)
    # our flow is for J = ½E‖W(x₁ − x₂)‖² with S = E[(x₁−x₂)(x₁−x₂)ᵀ] = 2X′ and unit rate, so the
    # flow of L = E‖W(x − x⁺)‖² at rate η reaches time t when ours reaches 2ηt.
    model = LinearSSL(torch.eye(n, dtype=torch.float64), S / 2, target="direct", predictor=False)
    _, states = integrate_rk4(model, LinearState(W0), t_end=2 * lr * t, dt=0.005, num_records=1)
    W_t = states[-1].W[0]
    rate = lr if counterfactual else 2 * lr
    predicted = W0[0] @ torch.linalg.matrix_exp(-rate * S * t)
    err = float((W_t - predicted).abs().max() / predicted.abs().max())
    null_ratio = float((W_t @ null_proj).norm() / (W0[0] @ null_proj).norm())
    return [
        Comparison("max |W_integrated − W_closed_form| / max |W|", 0.0, err, 1e-9),
        Comparison(
            "‖W(t)P_null(S)‖ / ‖W(0)P_null(S)‖", 0.0 if counterfactual else 1.0, null_ratio, 1e-10
        ),
    ]


@claim(
    "eigenmode-reduction",
    source="Tian, Chen & Ganguli 2021 (arXiv 2102.06810), Sec. 4, eqs. for ṗ_j, ṡ_j, τ̇_j",
    statement="With X = I, X′ = σ²I, W_p symmetric and aligned with F = WWᵀ and W_a = τW, the matrix "
    "ODEs reduce exactly to independent eigenmode ODEs for (p_j, s_j, τ_j).",
    counterfactual="ṡ_j = p_j s_j[τ_j − (1+σ²)p_j] − ηs_j (the factor 2 dropped)",
)
def _check_eigenmode_reduction(counterfactual: bool) -> list[Comparison]:
    from collapselab.theory.eigenmodes import mode_trajectory, rk4_modes, vector_field
    from collapselab.theory.linear import LinearSSL, LinearState, integrate_rk4

    gen = _gen(2)
    n, d = 5, 3
    eta, alpha_p, beta, sigma2 = 0.05, 1.5, 0.7, 0.3
    U = _orthonormal(d, d, gen)
    V = _orthonormal(n, d, gen)
    s0 = torch.tensor([1.0, 0.3, 0.05], dtype=torch.float64)
    p0 = torch.tensor([0.8, 0.4, 0.1], dtype=torch.float64)
    tau0 = torch.tensor([1.0, 0.9, 1.1], dtype=torch.float64)
    W0 = U @ torch.diag(s0.sqrt()) @ V.T
    Wp0 = U @ torch.diag(p0) @ U.T
    Wa0 = U @ torch.diag(tau0) @ U.T @ W0
    rows = []
    for target in ("ema", "stopgrad"):
        model = LinearSSL(
            torch.eye(n, dtype=torch.float64),
            sigma2 * torch.eye(n, dtype=torch.float64),
            target=target,
            weight_decay=eta,
            alpha_p=alpha_p,
            beta=beta,
        )
        start = LinearState(W0[None], Wp0[None], Wa0[None] if target == "ema" else None)
        _, states = integrate_rk4(model, start, t_end=8.0, dt=0.02, num_records=8)
        tau_init = tau0 if target == "ema" else torch.ones(d, dtype=torch.float64)
        params = dict(eta=eta, alpha_p=alpha_p, beta=beta, sigma2=sigma2, target=target)
        if counterfactual:

            def wrong(p, s, tau, params=params):
                dp, ds, dtau = vector_field(p, s, tau, **params)
                return dp, ds / 2, dtau

            _, traj = rk4_modes(wrong, (p0, s0, tau_init), 8.0, 0.02, 8)
            modes = {"p": traj[:, 0], "s": traj[:, 1], "tau": traj[:, 2]}
        else:
            modes = mode_trajectory(p0, s0, tau_init, t_end=8.0, dt=0.02, num_records=8, **params)
        worst = leak = 0.0
        for k, st in enumerate(states):
            F = U.T @ st.W[0] @ st.W[0].T @ U
            P = U.T @ st.Wp[0] @ U
            s_m, p_m = torch.diagonal(F), torch.diagonal(P)
            diffs = [(s_m - modes["s"][k]).abs().max(), (p_m - modes["p"][k]).abs().max()]
            if target == "ema":
                tau_m = torch.diagonal(U.T @ st.Wa[0] @ st.W[0].T @ U) / s_m
                diffs.append((tau_m - modes["tau"][k]).abs().max())
            worst = max(worst, *(float(x) for x in diffs))
            off = (F - torch.diag(s_m)).abs().max() + (P - torch.diag(p_m)).abs().max()
            leak = max(leak, float(off))
        rows.append(
            Comparison(f"{target}: max |mode ODE − matrix ODE| over t ≤ 8", 0.0, worst, 1e-7)
        )
        rows.append(Comparison(f"{target}: max off-diagonal of UᵀFU, UᵀW_pU", 0.0, leak, 1e-10))
    return rows


@claim(
    "fixed-points-and-stability",
    source="Tian, Chen & Ganguli 2021, Sec. 4 (fixed points of the eigenmode ODE, Fig. 3)",
    statement="For fixed τ: p*± = [τ ± √(τ² − 4η(1+σ²))]/(2(1+σ²)), s* = p*²/α_p, existing iff "
    "η ≤ τ²/(4(1+σ²)); p*₊ is stable, p*₋ unstable; the origin is stable for η > 0.",
    counterfactual="p*± = [τ ± √(τ² − 4η(1+σ²))]/(1+σ²) and threshold τ²/(1+σ²) (factors 2 and 4 dropped)",
)
def _check_fixed_points(counterfactual: bool) -> list[Comparison]:
    from scipy.optimize import brentq

    from collapselab.theory.eigenmodes import (
        existence_threshold,
        fixed_points,
        stability,
        vector_field,
    )

    eta, sigma2, alpha_p, tau = 0.05, 0.5, 1.3, 1.0
    k = 1 + sigma2
    params = dict(eta=eta, alpha_p=alpha_p, sigma2=sigma2, target="stopgrad")
    fp = fixed_points(eta, sigma2, tau, alpha_p)
    p_plus, p_minus = float(fp["p_plus"]), float(fp["p_minus"])
    threshold = float(existence_threshold(tau, sigma2))
    if counterfactual:
        root = math.sqrt(tau * tau - 4 * eta * k)
        p_plus, p_minus, threshold = (tau + root) / k, (tau - root) / k, tau * tau / k

    def growth(p: float, eta_: float = eta) -> float:  # ṡ/(2s) from the implemented field
        _, ds, _ = vector_field(
            torch.tensor(p, dtype=torch.float64),
            1.0,
            tau,
            eta=eta_,
            alpha_p=alpha_p,
            sigma2=sigma2,
            target="stopgrad",
        )
        return float(ds) / 2

    vertex = tau / (2 * k)
    root_minus = brentq(growth, 1e-12, vertex, xtol=1e-15)
    root_plus = brentq(growth, vertex, 10.0, xtol=1e-15)
    dp_at_root = float(
        vector_field(
            torch.tensor(root_plus, dtype=torch.float64), root_plus**2 / alpha_p, tau, **params
        )[0]
    )

    def has_fixed_point(eta_: float) -> bool:
        ps = torch.linspace(0, 2 * vertex, 4001, dtype=torch.float64)
        _, ds, _ = vector_field(
            ps,
            torch.ones_like(ps),
            tau,
            eta=eta_,
            alpha_p=alpha_p,
            sigma2=sigma2,
            target="stopgrad",
        )
        return bool((ds >= 0).any())

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if has_fixed_point(mid) else (lo, mid)

    def analytic_max_real(p: float) -> float:
        s = p * p / alpha_p
        trace, det = -alpha_p * s * k - eta, 2 * eta * (k * p * p - eta)
        disc = complex(trace * trace - 4 * det) ** 0.5
        return max(((trace + disc) / 2).real, ((trace - disc) / 2).real)

    stab_plus = float(stability(root_plus, root_plus**2 / alpha_p, tau, **params)["max_real"])
    stab_minus = float(stability(root_minus, root_minus**2 / alpha_p, tau, **params)["max_real"])
    stab_origin = float(stability(0.0, 0.0, tau, **params)["max_real"])
    return [
        Comparison("p*₊ (root of ṡ/s found by brentq)", p_plus, root_plus, 1e-10),
        Comparison("p*₋ (root of ṡ/s found by brentq)", p_minus, root_minus, 1e-10),
        Comparison("ṗ at (p*₊, p*₊²/α_p)", 0.0, dp_at_root, 1e-12),
        Comparison(
            "existence threshold η_c (bisection on the field)", threshold, 0.5 * (lo + hi), 1e-6
        ),
        Comparison(
            "max Re λ(J) at p*₊ (autograd vs trace/det)", analytic_max_real(p_plus), stab_plus, 1e-9
        ),
        Comparison("max Re λ(J) at p*₊ is negative", 0.0, stab_plus, relation="<"),
        Comparison("max Re λ(J) at p*₋ is positive", 0.0, stab_minus, relation=">"),
        Comparison("max Re λ(J) at origin = −η", -eta, stab_origin, 1e-12),
    ]


@claim(
    "direct-minimisation-collapses",
    source="Ponce, Terver & Hebert 2025 ('Dual perspectives on non-contrastive SSL', arXiv 2507.01028)",
    statement="In the linear case, minimising J directly (no stop-gradient, no EMA) collapses: W → 0 "
    "from every initialisation, with or without predictor.",
    counterfactual="the same runs with the augmentation noise removed (X′ = 0, σ² = 0: the two "
    "views agree, nothing pulls W to 0); the check ‖W(T)‖²/‖W(0)‖² < 1e-6 must then fail",
)
def _check_direct_collapse(counterfactual: bool) -> list[Comparison]:
    from collapselab.theory.eigenmodes import vector_field
    from collapselab.theory.linear import LinearSSL, LinearState, integrate_adaptive

    gen = _gen(4)
    n, d, batch = 4, 3, 8
    X, Xp = _random_spd(n, gen), 0.5 * _random_spd(n, gen)
    if counterfactual:  # remove the mechanism: without augmentation noise J has no pull to W = 0
        Xp = torch.zeros_like(Xp)
    rows = []
    for predictor in (True, False):
        model = LinearSSL(X, Xp, target="direct", predictor=predictor, batch=batch)
        W0 = torch.randn(batch, d, n, generator=gen, dtype=torch.float64)
        Wp0 = torch.eye(d, dtype=torch.float64) + 0.5 * torch.randn(
            batch, d, d, generator=gen, dtype=torch.float64
        )
        _, states = integrate_adaptive(
            model,
            LinearState(W0, Wp0 if predictor else None),
            t_end=60.0,
            num_records=1,
            rtol=1e-8,
            atol=1e-14,
        )
        ratio = float(
            (states[-1].W.flatten(1).norm(dim=1) ** 2 / W0.flatten(1).norm(dim=1) ** 2).max()
        )
        label = "with" if predictor else "without"
        rows.append(
            Comparison(
                f"{label} predictor: max ‖W(T)‖²/‖W(0)‖² over 8 inits", 1e-6, ratio, relation="<"
            )
        )
    sigma2, eta = (0.0 if counterfactual else 0.3), 0.0
    ps = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    _, ds, _ = vector_field(ps, torch.ones_like(ps), 1.0, eta=eta, sigma2=sigma2, target="direct")
    k = 1 + sigma2
    bound = -(k - 1 / k) - eta
    rows.append(
        Comparison(
            "eigenmodes: max_p ṡ/(2s) = −((1+σ²) − 1/(1+σ²)) − η", bound, float(ds.max() / 2), 1e-8
        )
    )
    rows.append(  # every mode decays: the largest growth rate is negative
        Comparison("eigenmodes: max_p ṡ/(2s) < 0", 0.0, float(ds.max() / 2), relation="<")
    )
    return rows


def _quotient_max_real(jac: torch.Tensor, tangent: torch.Tensor) -> float:
    """Max real part of the Jacobian's eigenvalues on the complement of the symmetry orbit."""
    q_t, _ = torch.linalg.qr(tangent)
    full = torch.linalg.svd(torch.eye(jac.shape[0], dtype=jac.dtype) - q_t @ q_t.T)
    complement = full.U[:, : jac.shape[0] - tangent.shape[1]]
    return float(torch.linalg.eigvals(complement.T @ jac @ complement).real.max())


@claim(
    "stopgrad-ema-stable-equilibria",
    source="Ponce, Terver & Hebert 2025; Tian, Chen & Ganguli 2021 Sec. 4",
    statement="Stop-gradient and EMA (with predictor) converge to non-trivial equilibria whose Jacobian "
    "eigenvalues all have negative real part (modulo the rotation symmetry W → RW, "
    "W_p → RW_pRᵀ); these points are not critical points of J.",
    counterfactual="the same runs with the stop-gradient / EMA removed (gradients through the target, "
    "target='direct'): the limit is then W = 0, so the non-trivial-limit rows must fail",
)
def _check_stable_equilibria(counterfactual: bool) -> list[Comparison]:
    from collapselab.theory.linear import (
        LinearSSL,
        LinearState,
        flatten_state,
        integrate_adaptive,
        newton_polish,
        state_jacobian,
    )

    gen = _gen(5)
    n, d = 3, 2
    X = torch.diag(torch.tensor([2.0, 1.2, 0.5], dtype=torch.float64))
    Xp = 0.2 * torch.eye(n, dtype=torch.float64)
    rows = []
    for target in ("stopgrad", "ema"):
        run_as = "direct" if counterfactual else target  # counterfactual: mechanism removed
        model = LinearSSL(X, Xp, target=run_as, weight_decay=0.02, alpha_p=1.0, beta=0.5)
        W0 = torch.randn(1, d, n, generator=gen, dtype=torch.float64)
        Wp0 = 0.8 * torch.eye(d, dtype=torch.float64) + 0.05 * torch.randn(
            1, d, d, generator=gen, dtype=torch.float64
        )
        start = model.check_state(LinearState(W0, Wp0, None))
        _, states = integrate_adaptive(
            model, start, t_end=600.0, num_records=1, rtol=1e-10, atol=1e-12
        )
        eq, residual = newton_polish(model, states[-1])
        jac = state_jacobian(model, eq)
        A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
        orbit = LinearState(A @ eq.W, A @ eq.Wp - eq.Wp @ A, None if eq.Wa is None else A @ eq.Wa)
        max_real = _quotient_max_real(jac, flatten_state(orbit).unsqueeze(1))
        sv_min = float(torch.linalg.svdvals(eq.W[0]).min())
        direct = LinearSSL(X, Xp, target="direct", weight_decay=0.0, alpha_p=1.0)
        grad = direct.gradients(LinearState(eq.W, eq.Wp, None))
        grad_norm = float(torch.cat([grad.W.flatten(), grad.Wp.flatten()]).norm())
        rows += [
            Comparison(f"{target}: ‖vector field‖ at the limit", 0.0, residual, 1e-10),
            Comparison(
                f"{target}: smallest singular value of W (non-trivial)", 0.1, sv_min, relation=">"
            ),
            Comparison(
                f"{target}: max Re λ(J) off the symmetry orbit", 0.0, max_real, relation="<"
            ),
            Comparison(
                f"{target}: ‖∇J‖ of the original objective there (not a critical point)",
                1e-3,
                grad_norm,
                relation=">",
            ),
        ]
    return rows


@claim(
    "no-predictor-collapse-stable",
    source="collapselab (docs/theory.md, 'the predictor as a bottleneck'); Tian, Chen & Ganguli 2021 "
    "Sec. 3; Chen & He 2021 Sec. 4.2 (empirical)",
    statement="Without a predictor, stop-gradient (and EMA) do not rescue the collapsed point: the "
    "gradient vanishes at W = 0 and every Jacobian eigenvalue there is negative.",
    counterfactual="the prediction without weight decay: max Re λ(J) = −λ_min(X′) for stop-gradient "
    "and the EMA blocks [[−(x + x′), x], [β, −β]] (η dropped)",
)
def _check_no_predictor(counterfactual: bool) -> list[Comparison]:
    from collapselab.theory.linear import LinearSSL, LinearState, flatten_state, state_jacobian

    x = torch.tensor([2.0, 1.0, 0.6, 0.3], dtype=torch.float64)
    xp = torch.tensor([0.4, 0.1, 0.2, 0.05], dtype=torch.float64)
    basis = _orthonormal(4, 4, _gen(6))
    X, Xp = basis @ torch.diag(x) @ basis.T, basis @ torch.diag(xp) @ basis.T
    eta, beta, d = 0.01, 0.5, 2
    rows = []
    for target in ("stopgrad", "ema"):
        model = LinearSSL(X, Xp, target=target, predictor=False, weight_decay=eta, beta=beta)
        zero = model.check_state(LinearState(torch.zeros(1, d, 4, dtype=torch.float64)))
        speed = float(flatten_state(model.vector_field(zero)).norm())
        measured = float(torch.linalg.eigvals(state_jacobian(model, zero)).real.max())
        decay = 0.0 if counterfactual else eta  # the counterfactual forgets the weight decay
        if target == "stopgrad":  # Ẇ = −W(X′ + ηI)
            predicted = -float((xp + decay).min())
        else:  # per eigen-direction [[−(x + x′ + η), x], [β, −β]]
            blocks = torch.stack(
                [
                    torch.stack([-(x + xp + decay), x]),
                    torch.stack([torch.full_like(x, beta), torch.full_like(x, -beta)]),
                ]
            ).permute(2, 0, 1)
            predicted = float(torch.linalg.eigvals(blocks).real.max())
        rows += [
            Comparison(f"{target}: ‖Ẇ‖ at W = 0", 0.0, speed, 1e-15),
            Comparison(f"{target}: max Re λ(J) at W = 0", predicted, measured, 1e-10),
            Comparison(f"{target}: max Re λ(J) at W = 0 is negative", 0.0, measured, relation="<"),
        ]
    return rows


@claim(
    "optimal-linear-predictor",
    source="Chen & He 2021 Sec. 5 (SimSiam as EM); A* = Σ₂₁Σ₁₁⁻¹ is ordinary least squares "
    "(collapselab, docs/theory.md §3)",
    statement="The optimal linear predictor is A* = Σ₂₁Σ₁₁⁻¹; for Gaussian views with cross-covariance ρI "
    "it is h*(z) = ρz; the linear model's predictor flow (encoder frozen) converges to A*.",
    counterfactual="A* = Σ₁₁⁻¹Σ₂₁ (factors swapped) and h*(z) = ρ²z",
)
def _check_optimal_predictor(counterfactual: bool) -> list[Comparison]:
    from collapselab.theory.linear import LinearSSL, LinearState

    gen = _gen(7)
    d, num = 3, 200_000
    joint = _random_spd(2 * d, gen, floor=0.2)
    S11, S21 = joint[:d, :d], joint[d:, :d]
    predicted = S21 @ torch.linalg.inv(S11) if not counterfactual else torch.linalg.inv(S11) @ S21
    root = torch.linalg.cholesky(joint)
    z = torch.randn(num, 2 * d, generator=gen, dtype=torch.float64) @ root.T
    z1, z2 = z[:, :d], z[:, d:]
    fitted = torch.linalg.lstsq(z1, z2).solution.T  # argmin_A Σ‖A z1 − z2‖²
    rho = 0.6
    y1 = torch.randn(num, d, generator=gen, dtype=torch.float64)
    y2 = rho * y1 + math.sqrt(1 - rho**2) * torch.randn(num, d, generator=gen, dtype=torch.float64)
    fitted_rho = torch.linalg.lstsq(y1, y2).solution.T
    rho_pred = rho**2 if counterfactual else rho
    # the predictor flow of the linear model with W frozen: Ẇ_p = α_p(Σ₂₁ − W_pΣ₁₁), Σ from W, X, X′
    n = 4
    X, Xp = _random_spd(n, gen), 0.3 * _random_spd(n, gen)
    W = torch.randn(1, d, n, generator=gen, dtype=torch.float64)
    model = LinearSSL(X, Xp, target="stopgrad", alpha_p=1.0)
    sig11, sig21 = W[0] @ (X + Xp) @ W[0].T, W[0] @ X @ W[0].T
    step = 1.0 / float(torch.linalg.eigvalsh(sig11).max())  # explicit Euler, stable and contracting
    Wp = torch.zeros(1, d, d, dtype=torch.float64)
    for _ in range(200_000):
        update = step * model.vector_field(LinearState(W, Wp)).Wp
        Wp = Wp + update
        if float(update.abs().max()) < 1e-15:
            break
    flow_pred = (
        sig21 @ torch.linalg.inv(sig11) if not counterfactual else torch.linalg.inv(sig11) @ sig21
    )
    return [
        Comparison(
            "sampled least squares vs Σ₂₁Σ₁₁⁻¹ (max entry error)",
            0.0,
            float((fitted - predicted).abs().max()),
            0.02,
        ),
        Comparison(
            "ρI views: fitted diagonal mean",
            rho_pred,
            float(torch.diagonal(fitted_rho).mean()),
            0.01,
        ),
        Comparison(
            "ρI views: largest off-diagonal entry",
            0.0,
            float((fitted_rho - torch.diag(torch.diagonal(fitted_rho))).abs().max()),
            0.01,
        ),
        Comparison(
            "predictor flow limit vs Σ₂₁Σ₁₁⁻¹ (max entry error)",
            0.0,
            float((Wp[0] - flow_pred).abs().max()),
            1e-8,
        ),
    ]


@claim(
    "stable-rank-scale-invariant",
    source="collapselab (docs/diagnostics.md, 'Spectral'): srank = (tr Σ)²/‖Σ‖_F² is the participation "
    "ratio of Gao et al. 2017 (bioRxiv, 'A theory of multineuronal dimensionality, dynamics and "
    "measurement'); the matrix-analysis stable rank ‖Z‖_F²/‖Z‖₂² is Rudelson & Vershynin 2007 "
    "(J. ACM 54(4), 'Sampling from large matrices')",
    statement="Both stable ranks of the library (stable_rank = (tr Σ)²/‖Σ‖_F², spectral_stable_rank = "
    "Σλ/λ₁) are invariant to scaling the embedding (srank(c·Z) = srank(Z)) and tend to 1 as one "
    "eigenvalue dominates.",
    counterfactual="the rank scales like the variance, srank(c·Z) = c²·srank(Z), and a dominant "
    "eigenvalue leaves it at D (the number of non-zero eigenvalues)",
)
def _check_stable_rank(counterfactual: bool) -> list[Comparison]:
    from collapselab.diagnostics import spectral_stable_rank, stable_rank

    gen = _gen(8)
    num, dim = 4000, 8

    def with_covariance(lam: torch.Tensor) -> torch.Tensor:
        z = torch.randn(num, dim, generator=gen, dtype=torch.float64)
        z = z - z.mean(0)
        vals, vecs = torch.linalg.eigh(z.T @ z / num)
        white = z @ vecs @ torch.diag(vals.rsqrt()) @ vecs.T  # sample covariance exactly I
        return white * lam.sqrt()

    lam = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.1], dtype=torch.float64)
    z = with_covariance(lam)
    formulas = {
        "srank": lambda lam: float(lam.sum() ** 2 / (lam**2).sum()),
        "spectral srank": lambda lam: float(lam.sum() / lam.max()),
    }
    functions = {"srank": stable_rank, "spectral srank": spectral_stable_rank}
    rows = []
    for name, fn in functions.items():
        base = float(fn(z))
        rows.append(
            Comparison(f"{name}(Z) vs its formula", formulas[name](lam), base, 1e-9, relative=True)
        )
        for c in (1e3, 1e-3, -2.0):  # scale invariance: measured at c·Z against Z itself
            pred = c * c * base if counterfactual else base
            rows.append(
                Comparison(
                    f"{name}({c:g}·Z) vs {name}(Z)", pred, float(fn(c * z)), 1e-9, relative=True
                )
            )
        for eps in (1e-2, 1e-4, 1e-6):  # one eigenvalue dominates: → 1
            lam_dom = torch.tensor([1.0] + [eps] * (dim - 1), dtype=torch.float64)
            # the distance to 1 shrinks with ε (srank ≈ 1 + 14ε, Σλ/λ₁ = 1 + 7ε): allow twice it
            tolerance = 2 * (formulas[name](lam_dom) - 1.0)
            pred = float(dim) if counterfactual else 1.0
            rows.append(
                Comparison(
                    f"{name} with λ = (1, {eps:g}, …) → 1",
                    pred,
                    float(fn(with_covariance(lam_dom))),
                    tolerance,
                )
            )
    return rows


class _ConstantBackbone(torch.nn.Module):
    """Every image → the same feature vector: a completely collapsed backbone."""

    def __init__(self, feature: torch.Tensor) -> None:
        super().__init__()
        self.out_dim = feature.numel()
        self.feature = torch.nn.Parameter(feature.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature.expand(x.shape[0], -1)


class _single_thread:
    """Run tiny tensor loops on one thread (two threads only add contention on a shared CPU)."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)


@claim(
    "nt-xent-collapse-and-simplex",
    source="Chen et al. 2020 (SimCLR, arXiv 2002.05709) for NT-Xent; collapse value and simplex ETF: "
    "collapselab (docs/diagnostics.md, 'Losses at their collapse value'; docs/theory.md §3), cf. "
    "Jing et al. 2022 (ICLR, arXiv 2110.09348) on dimensional collapse of contrastive losses",
    statement="NT-Xent at complete collapse equals log(2N − 1) for any temperature (the library's loss, "
    "SimCLR's stated collapse_loss and SimCLR's forward pass on a collapsed backbone); a simplex ETF of "
    "N points minimises the negative-pair term and spans only N − 1 dimensions.",
    counterfactual="collapse gives log(2N) (the anchor's own similarity left in the denominator) and "
    "the ETF spans N dimensions",
)
def _check_nt_xent(counterfactual: bool) -> list[Comparison]:
    from collapselab.losses import nt_xent
    from collapselab.methods import SimCLR, SimCLRConfig, build_method

    gen = _gen(9)
    num, dim = 16, 32
    pred = math.log(2 * num) if counterfactual else math.log(2 * num - 1)
    rows = []
    for temperature in (0.1, 0.5):
        z = torch.randn(1, dim, generator=gen, dtype=torch.float64).repeat(num, 1)
        rows.append(
            Comparison(
                f"collapselab.losses.nt_xent at collapse (N={num}, τ={temperature})",
                pred,
                float(nt_xent(z, z, temperature=temperature)),
                1e-9,
            )
        )
        config = SimCLRConfig(temperature=temperature, projector="small", projector_out_dim=8)
        backbone = _ConstantBackbone(torch.randn(12, generator=gen, dtype=torch.float64))
        method = build_method(config, backbone).double()
        assert isinstance(method, SimCLR)
        views = [torch.randn(num, 1, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
        with torch.no_grad():
            loss = float(method(views).loss)
        rows += [
            Comparison(
                f"SimCLR.collapse_loss({num}), τ={temperature}",
                pred,
                method.collapse_loss(num),
                1e-12,
            ),
            Comparison(
                f"SimCLR forward on a collapsed backbone (N={num}, τ={temperature})",
                pred,
                loss,
                1e-9,
            ),
        ]
    n_pts, tau = 8, 0.5
    etf = torch.eye(n_pts, dtype=torch.float64) - 1.0 / n_pts
    etf = etf / etf.norm(dim=1, keepdim=True)
    etf = etf @ _orthonormal(dim, n_pts, gen).T  # embed in R^dim
    gram = etf @ etf.T
    off = gram[~torch.eye(n_pts, dtype=torch.bool)]

    def negative_term(points: torch.Tensor) -> torch.Tensor:
        sims = points @ points.T / tau
        sims = sims.masked_fill(torch.eye(len(points), dtype=torch.bool), -math.inf)
        return torch.logsumexp(sims, dim=1).mean()

    bound = math.log(n_pts - 1) - 1.0 / ((n_pts - 1) * tau)  # Jensen + ‖Σz_i‖² ≥ 0
    best = math.inf
    with _single_thread():
        for _ in range(4):  # projected gradient descent from random starts never beats the ETF
            x = torch.randn(n_pts, dim, generator=gen, dtype=torch.float64).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=0.05)
            for _ in range(400):
                opt.zero_grad()
                loss = negative_term(x / x.norm(dim=1, keepdim=True))
                loss.backward()
                opt.step()
            with torch.no_grad():
                best = min(best, float(negative_term(x / x.norm(dim=1, keepdim=True))))
    rank = int((torch.linalg.svdvals(etf) > 1e-10).sum())
    rows += [
        Comparison(
            "ETF mean pairwise cosine = −1/(N−1)", -1.0 / (n_pts - 1), float(off.mean()), 1e-12
        ),
        Comparison(
            "negative-pair term at the ETF = log(N−1) − 1/((N−1)τ)",
            bound,
            float(negative_term(etf)),
            1e-12,
        ),
        Comparison(
            "best negative-pair term from 4 optimised random starts ≥ bound",
            bound - 1e-9,
            best,
            relation=">",
        ),
        Comparison(
            "rank of the ETF", float(n_pts if counterfactual else n_pts - 1), float(rank), 0.0
        ),
    ]
    return rows


@claim(
    "batchnorm-jacobian-inverse-spread",
    source="collapselab (docs/theory.md §3, 'BatchNorm as an implicit restoring force'); Ioffe & "
    "Szegedy 2015 (BatchNorm, ICML, Sec. 3); cf. Richemond et al. 2020 (arXiv 2010.10241)",
    statement="For a batch-normalised feature with spread σ, the Jacobian ∂ẑ/∂z of the library's "
    "projector BatchNorm layers has spectral norm γ/√(σ² + ε): it grows as 1/σ as the dimension "
    "collapses (until σ² reaches ε).",
    counterfactual="the Jacobian grows as 1/σ²: γ/(σ² + ε) (log-log slope −2)",
)
def _check_batchnorm(counterfactual: bool) -> list[Comparison]:
    from collapselab.models import mlp_head_preset

    gen = _gen(10)
    num, width, gamma = 64, 6, 1.5
    # SimSiam's projector: BN (affine) after each hidden Linear, BN without affine on the output
    head = mlp_head_preset(
        "simsiam_projector", 4, size="small", hidden_dim=width, out_dim=width
    ).double()
    layers = [m for m in head.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if len(layers) != 3:
        raise RuntimeError(
            f"expected 3 BatchNorm layers in the SimSiam projector, got {len(layers)}"
        )
    with torch.no_grad():  # a learnt scale on the hidden layers (the output BN has none)
        for layer in layers:
            if layer.weight is not None:
                layer.weight.fill_(gamma)
    head.train()  # batch statistics, as in training
    base = torch.randn(num, generator=gen, dtype=torch.float64)
    base = (base - base.mean()) / base.std(unbiased=False)
    others = torch.randn(num, width - 1, generator=gen, dtype=torch.float64)
    sigmas = [1.0, 0.3, 0.1, 0.03]  # σ² ≫ ε = 1e-5: the 1/σ regime
    rows = []
    for index, layer in enumerate(layers):
        g = 1.0 if layer.weight is None else float(layer.weight.detach()[0])
        eps = float(layer.eps)

        def feature0(z0: torch.Tensor, layer=layer) -> torch.Tensor:
            return layer(torch.cat([z0.unsqueeze(1), others], dim=1))[:, 0]

        norms, preds = [], []
        for sigma in sigmas:
            jac = torch.autograd.functional.jacobian(feature0, 3.0 + sigma * base)
            norms.append(float(torch.linalg.matrix_norm(jac, ord=2)))
            var = sigma * sigma
            preds.append(g / (var + eps) if counterfactual else g / math.sqrt(var + eps))
            rows.append(
                Comparison(
                    f"BN layer {index} (γ = {g:g}, ε = {eps:g}): ‖∂ẑ/∂z‖₂ at σ = {sigma:g}",
                    preds[-1],
                    norms[-1],
                    1e-6,
                    relative=True,
                )
            )

        def slope(values: list[float]) -> float:
            return (math.log(values[-1]) - math.log(values[0])) / (
                math.log(sigmas[-1]) - math.log(sigmas[0])
            )

        rows.append(
            Comparison(
                f"BN layer {index}: log-log slope of ‖J‖ against σ",
                slope(preds),
                slope(norms),
                1e-4,
            )
        )
    return rows


@claim(
    "rademacher-quasi-orthogonality",
    source="Sansone, Lebailly & Tuytelaars 2025 (FALCON/CPLearn, ICML 2025, arXiv 2410.04959)",
    statement="The ±1 code words of the library's FALCON dictionary (drawn from its dictionary_seed) "
    "have cosine similarity with mean 0 and variance exactly 1/f (quasi-orthogonal for large f).",
    counterfactual="the cosine variance is 2/f",
)
def _check_rademacher(counterfactual: bool) -> list[Comparison]:
    from collapselab.methods import FALCON, FALCONConfig, build_method

    rows = []
    codes = 512
    for seed, f in enumerate((64, 256, 1024)):
        config = FALCONConfig(projector_out_dim=f, n_codes=codes, dictionary_seed=seed)
        method = build_method(config, _ConstantBackbone(torch.zeros(4, dtype=torch.float64)))
        assert isinstance(method, FALCON)
        dictionary = method.dictionary
        words = dictionary.dense(torch.float64)  # (f, c)
        signs = float(((words == 1) | (words == -1)).double().mean())
        with torch.no_grad():  # WᵀW through the dictionary's own packed-bit product
            gram = dictionary(words.T.contiguous()) / f
        cos = gram[torch.triu_indices(codes, codes, offset=1).unbind()]
        pairs = cos.numel()
        # cosines of distinct pairs are pairwise independent: SE of the mean of cos² is
        # √(Var(cos²)/M) with Var(cos²) = E cos⁴ − (E cos²)² = (2f − 2)/f³.
        se = math.sqrt((2 * f - 2) / f**3 / pairs)
        pred = 2.0 / f if counterfactual else 1.0 / f
        rows += [
            Comparison(f"fraction of ±1 entries, f = {f}", 1.0, signs, 0.0),
            Comparison(
                f"diagonal of WᵀW/f, f = {f}", 1.0, float(torch.diagonal(gram).mean()), 1e-12
            ),
            Comparison(
                f"E[cos²] over {pairs} pairs, f = {f}", pred, float((cos**2).mean()), 5 * se
            ),
            Comparison(
                f"E[cos], f = {f}", 0.0, float(cos.mean()), 5 * math.sqrt(1.0 / (f * pairs))
            ),
        ]
    return rows


@claim(
    "uniformity-zero-at-collapse",
    source="Wang & Isola 2020 ('Understanding contrastive representation learning through alignment "
    "and uniformity on the hypersphere', ICML 2020, Sec. 4.1, L_uniform = log E exp(−t‖ẑ_i − ẑ_j‖²)); "
    "Eq. 5 there; the bound −2t·N/(N − 1) and its simplex equality are collapselab's (docs/diagnostics.md, "
    "'Geometric'; Jensen with ‖Σ_i ẑ_i‖² ≥ 0)",
    statement="Uniformity log E_{i≠j} exp(−t‖ẑ_i − ẑ_j‖²) equals 0 at complete collapse for every t (the "
    "diagnostic and the training loss), tends to 0 as −t·E‖ẑ_i − ẑ_j‖² near collapse, and reaches "
    "its lower bound −2t·N/(N − 1) at a regular simplex of N points.",
    counterfactual="the sign convention read backwards: collapse at the bound −2t·N/(N − 1), the "
    "simplex at 0, and +t·E‖ẑ_i − ẑ_j‖² near collapse",
)
def _check_uniformity(counterfactual: bool) -> list[Comparison]:
    from collapselab.diagnostics import uniformity
    from collapselab.losses.geometric import uniformity as uniformity_loss

    gen = _gen(12)
    num, dim = 12, 16
    bound = {t: -2.0 * t * num / (num - 1) for t in (0.5, 2.0)}
    rows = []
    point = torch.randn(1, dim, generator=gen, dtype=torch.float64)
    collapsed = point.repeat(num, 1) * torch.rand(num, 1, generator=gen, dtype=torch.float64).add(
        0.5
    )
    simplex = torch.eye(num, dtype=torch.float64) - 1.0 / num  # regular simplex, embedded in R^dim
    simplex = simplex @ _orthonormal(dim, num, gen).T
    near = point + 1e-4 * torch.randn(num, dim, generator=gen, dtype=torch.float64)
    unit = near / near.norm(dim=1, keepdim=True)
    off = ~torch.eye(num, dtype=torch.bool)
    mean_sq = float(torch.cdist(unit, unit).square()[off].mean())  # E_{i≠j}‖ẑ_i − ẑ_j‖²
    for t in (0.5, 2.0):
        at_collapse = bound[t] if counterfactual else 0.0
        at_simplex = 0.0 if counterfactual else bound[t]
        near_pred = (1.0 if counterfactual else -1.0) * t * mean_sq
        rows += [
            Comparison(
                f"diagnostics.uniformity at collapse, t = {t:g}",
                at_collapse,
                uniformity(collapsed, t=t),
                1e-12,
            ),
            Comparison(
                f"losses uniformity at collapse, t = {t:g}",
                at_collapse,
                float(uniformity_loss(collapsed, t=t)),
                1e-12,
            ),
            Comparison(
                f"diagnostics.uniformity near collapse (spread 1e-4), t = {t:g}, vs −t·E‖ẑ_i − ẑ_j‖²",
                near_pred,
                uniformity(near, t=t),
                1e-6,
                relative=True,
            ),
            Comparison(
                f"diagnostics.uniformity at the simplex, t = {t:g}",
                at_simplex,
                uniformity(simplex, t=t),
                1e-12,
            ),
            Comparison(
                f"losses uniformity at the simplex, t = {t:g}",
                at_simplex,
                float(uniformity_loss(simplex, t=t)),
                1e-12,
            ),
        ]
    return rows


@claim(
    "entropy-is-not-geometry",
    source="collapselab (docs/diagnostics.md, \"Entropy is not geometry\"); the four modes of "
    "Sansone, Lebailly & Tuytelaars 2025 (arXiv 2410.04959); dimensional collapse: Jing et al., "
    "ICLR 2022",
    statement="Maximal code-usage entropy says nothing about the geometry: codes assigned by a hash "
    "of a rank-1 embedding use all c codes (entropy ≈ log c, cluster verdict healthy) while the "
    "embedding has effective rank 1 (dimensional verdict collapsed); the diagnosis says why.",
    counterfactual="predicts that maximal code entropy implies an uncollapsed geometry: the "
    "dimensional verdict as healthy as the cluster one and an effective rank near c",
)
def _check_entropy_is_not_geometry(counterfactual: bool) -> list[Comparison]:
    import hashlib

    from collapselab.diagnostics import diagnose

    levels = {"healthy": 0.0, "warning": 1.0, "collapsed": 2.0}
    gen = _gen(20)
    n, d, c = 4000, 32, 32
    coordinate = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    z = coordinate @ torch.randn(1, d, generator=gen, dtype=torch.float64)  # rank 1
    codes = torch.tensor([
        int.from_bytes(hashlib.blake2b(row.numpy().tobytes(), digest_size=8).digest(), "little") % c
        for row in coordinate
    ])
    diag = diagnose(z, codes=codes)
    return [
        Comparison(f"code entropy / log c, c = {c}", 1.0, diag.metrics["code_entropy"] / math.log(c), 1e-2),
        Comparison("cluster verdict level (0 healthy, 2 collapsed)", 0.0, levels[diag.verdict["cluster"]], 0.0),
        Comparison("effective rank of the embedding", float(c) if counterfactual else 1.0,
                   diag.metrics["effective_rank"], 1e-6),
        Comparison("dimensional verdict level (0 healthy, 2 collapsed)", 0.0 if counterfactual else 2.0,
                   levels[diag.verdict["dimensional"]], 0.0),
        Comparison("the cluster reason names the difference (1 = yes)", 1.0,
                   float("not of the geometry" in diag.reasons["cluster"]), 0.0),
    ]
