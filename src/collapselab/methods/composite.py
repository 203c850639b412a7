"""Composite geometric objective: build-your-own loss from weighted terms (alignment, variance,
covariance, uniformity) plus the predictor / stop-gradient / EMA switches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from collapselab._validation import InputError
from collapselab.losses.geometric import (
    cosine_alignment,
    covariance_penalty,
    mse_alignment,
    uniformity,
    variance_hinge,
)
from collapselab.methods.base import (
    MethodConfig,
    MethodOutput,
    SiameseConfig,
    SiameseMethod,
    SSLMethod,
    ema_base,
    register_method,
)

ALIGNMENTS = ("mse", "cosine")
WEIGHTS = ("alignment_weight", "variance_weight", "covariance_weight", "uniformity_weight")


@dataclass
class CompositeConfig(SiameseConfig):
    """Default = VICReg's objective (λ = μ = 25, ν = 1, MSE alignment) with no predictor, no
    stop-gradient and no EMA: the plain objective, minimised directly. A weight of 0 removes its
    term (not computed). ``uniformity_t``: Wang & Isola's t; ``gamma``, ``eps``: the variance hinge."""

    name: str = "composite"
    alignment_weight: float = 25.0
    alignment: str = "mse"
    variance_weight: float = 25.0
    covariance_weight: float = 1.0
    uniformity_weight: float = 0.0
    uniformity_t: float = 2.0
    gamma: float = 1.0
    eps: float = 1e-4
    predictor: str = "none"
    stop_gradient: bool = False
    ema: Any = "off"
    ema_final: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.alignment not in ALIGNMENTS:
            raise InputError(f"method.alignment must be one of {', '.join(ALIGNMENTS)}, got {self.alignment!r}")
        for key in WEIGHTS:
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InputError(f"method.{key} must be a finite number >= 0, got {value!r}")
        if all(getattr(self, key) == 0 for key in WEIGHTS):
            raise InputError(f"method: every weight is 0 ({', '.join(WEIGHTS)}); nothing to minimise")
        for key in ("uniformity_t", "gamma", "eps"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise InputError(f"method.{key} must be a positive finite number, got {value!r}")
        if self.alignment_weight == 0 and (self.predictor != "none" or ema_base(self.ema) is not None):
            raise InputError(
                "method.predictor and method.ema act only through the alignment term: with "
                "method.alignment_weight=0 set method.predictor=none and method.ema=off"
            )


@register_method
class Composite(SiameseMethod):
    """A weighted sum of geometric terms, the lab bench for "regularisers remove collapse as an
    optimum, not as a training outcome" and "a predictor changes the trajectory, not the objective".

    With z_i = projector(backbone(v_i)) (online), p_i = predictor(z_i) (= z_i for ``predictor=none``)
    and t_i the target of view i (z_i itself; sg(z_i) with ``stop_gradient``; the EMA network's
    projection with ``ema``)::

        L = w_a·½[A(p₁, t₂) + A(p₂, t₁)]            A = mse (VICReg's s) or ‖p̂ − t̂‖² (BYOL)
          + w_v·½[v(z₁) + v(z₂)]                    v = variance hinge, γ = 1, ε = 1e-4
          + w_c·[c(z₁) + c(z₂)]                     c = (1/D) Σ_{i≠j} Cov_ij²
          + w_u·½[u(z₁) + u(z₂)]                    u = log mean_{i<j} exp(−t‖ẑ_i − ẑ_j‖²), t = 2

    Symmetrised over the two views: alignment in both directions (predictor output of one view
    against the target of the other), regularisers on the online embeddings of both views, with
    the official VICReg code's convention (variance averaged, covariance summed) and Wang & Isola's
    reference code's (uniformity averaged). With the defaults (w = 25, 25, 1, 0, no predictor, no
    stop-gradient, no EMA) L equals :func:`collapselab.losses.vicreg`. Terms with weight 0 are not
    computed; ``scalars`` logs each computed term unweighted.

    Sources: Bardes, Ponce & LeCun, "VICReg", ICLR 2022 (s, v, c); Wang & Isola, ICML 2020
    (alignment, uniformity); Grill et al., "BYOL", NeurIPS 2020 (predictor, EMA, cosine form).
    """

    name: ClassVar[str] = "composite"
    summary: ClassVar[str] = "weighted alignment + variance + covariance + uniformity, with the asymmetry switches"
    config_class: ClassVar[type[MethodConfig]] = CompositeConfig
    projector_preset: ClassVar[str] = "vicreg"
    predictor_preset: ClassVar[str] = "byol_predictor"
    switches: ClassVar[tuple[str, ...]] = (*WEIGHTS, "alignment", "predictor", "stop_gradient", "ema", "projector_bn")

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        c: CompositeConfig = self.config  # type: ignore[assignment]
        pair = self.two_views(views, "composite")
        if c.alignment_weight > 0:
            online, targets = self.branches(pair)
        else:  # no alignment: no predictor and no target to compute
            online, targets = [self.embed(x) for x in pair], []
        z1, z2 = online[0]["emb"], online[1]["emb"]
        terms: dict[str, torch.Tensor] = {}
        if c.alignment_weight > 0:
            align = mse_alignment if c.alignment == "mse" else cosine_alignment
            terms["alignment"] = (align(online[0]["pred"], targets[1]) + align(online[1]["pred"], targets[0])) / 2
        if c.variance_weight > 0:
            terms["variance"] = (variance_hinge(z1, c.gamma, c.eps) + variance_hinge(z2, c.gamma, c.eps)) / 2
        if c.covariance_weight > 0:
            terms["covariance"] = covariance_penalty(z1) + covariance_penalty(z2)
        if c.uniformity_weight > 0:
            terms["uniformity"] = (uniformity(z1, c.uniformity_t) + uniformity(z2, c.uniformity_t)) / 2
        loss = sum(getattr(c, f"{name}_weight") * term for name, term in terms.items())
        return MethodOutput(loss, online[0], {name: term.detach() for name, term in terms.items()})  # type: ignore[arg-type]

    def collapse_loss(self, batch_size: int) -> float:
        """Identical embeddings: alignment 0 (MSE, or 2 − 2·cos with cos 1), covariance 0,
        uniformity log E exp(0) = 0, and each dimension's variance hinge γ − √ε, so
        L = w_var·(γ − √ε)."""
        c: CompositeConfig = self.config  # type: ignore[assignment]
        return c.variance_weight * (c.gamma - math.sqrt(c.eps))

    def collapse_hints(self) -> list[str]:
        c: CompositeConfig = self.config  # type: ignore[assignment]
        hints = SSLMethod.collapse_hints(self)
        if c.variance_weight == 0 and c.uniformity_weight == 0:
            hints.append(
                "method.variance_weight=0 and uniformity_weight=0: no term penalises a constant "
                "embedding, so collapse minimises the objective"
            )
            hints.extend(h for h in super().collapse_hints() if h not in hints)
        elif c.covariance_weight == 0 and c.uniformity_weight == 0:
            hints.append(
                "method.covariance_weight=0 and uniformity_weight=0: nothing decorrelates the "
                "dimensions (the variance hinge alone allows dimensional collapse)"
            )
        return hints
