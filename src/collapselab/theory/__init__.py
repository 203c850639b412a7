"""The theory lab: linear SSL dynamics, eigenmode analysis, and the claims ledger.

* :mod:`collapselab.theory.linear` — matrix dynamics of W, W_p, W_a (direct / stop-gradient / EMA),
  expected flow (RK4 or adaptive) and SGD on sampled pairs; :func:`simulate`.
* :mod:`collapselab.theory.eigenmodes` — Tian, Chen & Ganguli (2021) eigenmode ODEs, fixed points,
  stability, collapse certificates and phase maps.
* :mod:`collapselab.theory.claims` — published claims as runnable checks (``collapselab verify``).
"""

from __future__ import annotations

from collapselab.theory.claims import (
    Claim,
    ClaimResult,
    Comparison,
    all_claims,
    claim,
    format_table,
    get_claim,
    register_claim,
    verify,
)
from collapselab.theory.eigenmodes import (
    PhaseMap,
    existence_threshold,
    fixed_points,
    integrate_modes,
    mode_trajectory,
    phase_map,
    predicted_collapse,
    stability,
)
from collapselab.theory.linear import (
    DivergenceError,
    LinearSSL,
    LinearState,
    SimulationResult,
    simulate,
)

__all__ = [
    "Claim",
    "ClaimResult",
    "Comparison",
    "DivergenceError",
    "LinearSSL",
    "LinearState",
    "PhaseMap",
    "SimulationResult",
    "all_claims",
    "claim",
    "existence_threshold",
    "fixed_points",
    "format_table",
    "get_claim",
    "integrate_modes",
    "mode_trajectory",
    "phase_map",
    "predicted_collapse",
    "register_claim",
    "simulate",
    "stability",
    "verify",
]
