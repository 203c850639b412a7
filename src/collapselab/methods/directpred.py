"""DirectPred: BYOL whose linear predictor is set from the running correlation of projector
outputs instead of being learned (Tian, Chen & Ganguli 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from collapselab import distributed
from collapselab._validation import InputError
from collapselab.losses import negative_cosine
from collapselab.methods.base import MethodConfig, MethodOutput, register_method
from collapselab.methods.byol import BYOL, BYOLConfig

LOGGED_EIGENVALUES = 4
"""How many of the largest eigenvalues go into the logged scalars (``corr_eig_1`` …)."""
EIGENVALUE_FLOOR = 1e-4
"""Lower bound on p_j after ε is added (the official code's ``clamp(1e-4)``; inert for ε ≥ 1e-4)."""


@dataclass
class DirectPredConfig(BYOLConfig):
    """BYOL's settings plus the predictor rule.

    ``correlation_momentum`` ρ: F̂ ← ρF̂ + (1 − ρ)E_batch[ffᵀ] (``dyn_lambda``, "ρ in eq. 19").
    ``predictor_eps`` ε: p_j = √(s_j / max s) + ε (``dyn_eps``, "ε in eq. 18").
    ``predictor_update_every``: W_p is recomputed after steps 0, k, 2k, … (``predictor_freq``);
    F̂ is updated every step regardless. Defaults 0.3 / 0.01 / 1 are the README command of the
    official code (facebookresearch/luckmatters, ssl/real-dataset). ``predictor`` must stay
    ``linear``: the d×d map set from F̂ (it has no trainable weight and no hidden layer).
    """

    name: str = "directpred"
    predictor: str = "linear"
    correlation_momentum: float = 0.3
    predictor_eps: float = 0.01
    predictor_update_every: int = 1

    def validate(self) -> None:
        super().validate()
        if self.predictor != "linear" or self.predictor_hidden_dim is not None:
            raise InputError(
                f"method.predictor must be 'linear' for directpred (its predictor is the d×d map set "
                f"from the feature correlation), got predictor={self.predictor!r}, "
                f"predictor_hidden_dim={self.predictor_hidden_dim!r}"
            )
        if not 0.0 <= float(self.correlation_momentum) < 1.0:
            raise InputError(f"method.correlation_momentum must be in [0, 1), got {self.correlation_momentum}")
        if not math.isfinite(float(self.predictor_eps)):
            raise InputError(f"method.predictor_eps must be a finite number, got {self.predictor_eps}")
        every = self.predictor_update_every
        if isinstance(every, bool) or int(every) != every or int(every) < 1:
            raise InputError(f"method.predictor_update_every must be a positive integer, got {every!r}")


def directpred_predictor(correlation: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DirectPred predictor of a feature correlation matrix.

    F = U diag(s) Uᵀ (symmetric eigendecomposition, s descending),
    p_j = max(√(max(s_j, 0) / max_k s_k) + ε, 1e-4),  W_p = U diag(p) Uᵀ.
    Tian et al. 2021, eqs. 18-19 (numbered as in the official README). Details as the official
    code's ``compute_w_corr`` with ``balance_type=boost_scale``, ``dyn_convert=2`` (square
    root), ``dyn_eps_inside=false`` (ε added after normalising and taking the root),
    ``dyn_reg=null`` (no shrinkage). Negative eigenvalues (round-off: F is PSD) are clamped to 0;
    F = 0 gives every p_j = ε. Computed in float64 with ``eigh`` (the official code took the real
    part of a general ``eig``). Shapes: (d, d) → W_p (d, d) in F's dtype, s (d,), p (d,) float64.
    """
    symmetric = correlation.detach().double()
    symmetric = (symmetric + symmetric.T) / 2
    s, u = torch.linalg.eigh(symmetric)
    s, u = s.flip(0), u.flip(1)
    top = s[0].clamp(min=torch.finfo(torch.float64).tiny)
    p = ((s.clamp(min=0) / top).sqrt() + eps).clamp(min=EIGENVALUE_FLOOR)
    weight = (u * p) @ u.T
    return weight.to(correlation.dtype), s, p


def batch_correlation(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """E[ffᵀ] over the rows of every tensor in ``features`` and over every rank (not centred).

    Rows of all views are pooled, as the official code averages the outer products of both views.
    One all_reduce of the summed outer products and the row count, so every rank gets the
    correlation of the global batch (exact also for unequal per-rank batches). Detached, float32,
    autocast off. Shapes: each (n_i, d) → (d, d).
    """
    f = torch.cat([x.detach().float() for x in features])
    with torch.autocast(f.device.type, enabled=False):
        sums = f.T @ f
    packed = torch.cat([sums.flatten(), sums.new_tensor([float(f.shape[0])])])
    packed = distributed.all_reduce(packed, op="sum")
    return packed[:-1].view_as(sums) / packed[-1]


class DirectPredictor(nn.Module):
    """p = W_p z with W_p set from the running correlation F̂ (all state in buffers, no parameters).

    Buffers (carried by checkpoints): ``correlation`` F̂, ``weight`` W_p (identity until first
    set), ``correlation_updates`` (count), and the spectra at the last set: ``correlation_eigenvalues``
    s and ``predictor_eigenvalues`` p (descending). The first update sets F̂ to the batch value,
    later ones blend with ρ (the official code's ``Accumulator``). Shapes: (B, d) → (B, d).
    """

    def __init__(self, dim: int, momentum: float, eps: float) -> None:
        super().__init__()
        self.in_dim = self.out_dim = dim
        self.momentum, self.eps = float(momentum), float(eps)
        self.register_buffer("correlation", torch.zeros(dim, dim))
        self.register_buffer("weight", torch.eye(dim))
        self.register_buffer("correlation_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("correlation_eigenvalues", torch.zeros(dim))
        self.register_buffer("predictor_eigenvalues", torch.ones(dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.linear(z, self.weight)

    @torch.no_grad()
    def update_correlation(self, batch: torch.Tensor) -> None:
        """F̂ ← batch on the first call, then F̂ ← ρF̂ + (1 − ρ)·batch (chosen on the device: no
        host synchronisation)."""
        blended = self.correlation.mul(self.momentum).add_(batch, alpha=1.0 - self.momentum)
        self.correlation.copy_(torch.where(self.correlation_updates == 0, batch, blended))
        self.correlation_updates += 1

    @torch.no_grad()
    def set_from_correlation(self, check: bool = True) -> bool:
        """W_p ← :func:`directpred_predictor` (F̂); False (nothing set) before the first update.
        ``check=False`` skips the test (a host read) where an update is known to have happened.
        The eigendecomposition itself synchronises a CUDA device (``torch.linalg.eigh``)."""
        if check and int(self.correlation_updates) == 0:
            return False
        weight, s, p = directpred_predictor(self.correlation, self.eps)
        self.weight.copy_(weight)
        self.correlation_eigenvalues.copy_(s)
        self.predictor_eigenvalues.copy_(p)
        return True


@register_method
class DirectPred(BYOL):
    """Tian, Chen & Ganguli, "Understanding self-supervised learning dynamics without contrastive
    pairs", ICML 2021 (arXiv 2102.06810): DirectPred.

    BYOL's loss, EMA target and stop-gradient, with a linear predictor that receives no gradient:
    in training, each forward folds E_batch[ffᵀ] of the online projector outputs f (both views,
    detached, not centred, not normalised: ``dyn_zero_mean=false``, ``dyn_bn=false``) into F̂;
    after the optimiser step (:meth:`after_step`, every ``predictor_update_every`` steps) W_p is
    set from F̂ by :func:`directpred_predictor`. Step t thus uses the W_p set after step t − 1, as
    the official ``BYOLTrainer`` (``regulate_predictor`` after ``optimizer.step``). Step 0 uses
    W_p = I (the official code starts from a random ``nn.Linear``; the loss is invariant to W_p's
    scale). Under DDP F̂ is all-reduced over ranks (:func:`batch_correlation`), so every rank sets
    the same W_p, equal to the single-process one on the global batch.
    Logged: ``cosine``, the top-4 ``corr_eig_i`` = s_i / s_1 and ``pred_eig_i`` = p_i / p_1 of
    the W_p in use; :meth:`spectra` gives the full spectra.
    """

    name: ClassVar[str] = "directpred"
    summary: ClassVar[str] = "BYOL with the linear predictor set from the feature correlation's eigenbasis (Tian et al. 2021)"
    config_class: ClassVar[type[MethodConfig]] = DirectPredConfig
    switches: ClassVar[tuple[str, ...]] = ("predictor_eps", "ema", "projector_bn")

    def __init__(self, config: DirectPredConfig, backbone: nn.Module) -> None:
        super().__init__(config, backbone)
        self.config: DirectPredConfig = config
        self.predictor = DirectPredictor(self.projector.out_dim, config.correlation_momentum, config.predictor_eps)

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        online, targets = self.branches(self.two_views(views, "directpred"))
        if self.training:
            self.predictor.update_correlation(batch_correlation([out["emb"] for out in online]))
        stop = self.config.stop_gradient
        d12 = negative_cosine(online[0]["pred"], targets[1], stop_gradient=stop)
        d21 = negative_cosine(online[1]["pred"], targets[0], stop_gradient=stop)
        loss = (2 + 2 * d12) + (2 + 2 * d21)
        return MethodOutput(loss, online[0], {"cosine": -(d12 + d21).detach() / 2, **self.spectrum_scalars()})

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        scalars = super().after_step(step, total_steps)
        if step % int(self.config.predictor_update_every) == 0:
            # after a training step, whose forward has just updated F̂
            self.predictor.set_from_correlation(check=not self.training)
        return scalars

    def spectra(self) -> dict[str, torch.Tensor]:
        """Full spectra at the last predictor update, descending, float64 on the CPU:
        ``correlation`` s (eigenvalues of F̂) and ``predictor`` p (eigenvalues of W_p)."""
        return {
            "correlation": self.predictor.correlation_eigenvalues.detach().double().cpu().clone(),
            "predictor": self.predictor.predictor_eigenvalues.detach().double().cpu().clone(),
        }

    def spectrum_scalars(self) -> dict[str, torch.Tensor]:
        """The top-4 s_i / s_1 and p_i / p_1 as 0-d tensors (no device sync)."""
        k = min(LOGGED_EIGENVALUES, self.predictor.out_dim)
        s = self.predictor.correlation_eigenvalues.detach()
        p = self.predictor.predictor_eigenvalues.detach()
        s, p = s[:k] / s[0].clamp(min=1e-30), p[:k] / p[0].clamp(min=1e-30)
        return {**{f"corr_eig_{i + 1}": s[i] for i in range(k)}, **{f"pred_eig_{i + 1}": p[i] for i in range(k)}}

    def collapse_hints(self) -> list[str]:
        hints = super().collapse_hints()
        if float(self.config.predictor_eps) <= 0:
            hints.append(
                "method.predictor_eps<=0: a mode with near-zero correlation gets p_j ≈ 0 and cannot "
                "grow back (Tian et al. 2021, DirectPred's ε)"
            )
        return hints
