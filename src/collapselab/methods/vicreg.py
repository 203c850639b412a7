"""VICReg: invariance + variance hinge + covariance penalty on the embeddings of two views."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from collapselab._validation import check_number
from collapselab.losses import vicreg
from collapselab.methods.base import (
    MethodConfig,
    MethodOutput,
    SSLMethod,
    register_method,
)


@dataclass
class VICRegConfig(MethodConfig):
    """VICReg defaults: 3-layer expander with BN, λ = μ = 25, ν = 1 (paper §4.1)."""

    name: str = "vicreg"
    invariance_weight: float = 25.0
    variance_weight: float = 25.0
    covariance_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        for key in ("invariance_weight", "variance_weight", "covariance_weight"):
            check_number(getattr(self, key), f"method.{key}")


@register_method
class VICReg(SSLMethod):
    """Bardes, Ponce & LeCun, "VICReg", ICLR 2022.

    L = λ·s(Z, Z′) + μ·[v(Z) + v(Z′)]/2 + ν·[c(Z) + c(Z′)] (see :func:`collapselab.losses.vicreg`
    for the terms and the official code's averaging of the variance terms). The variance weight μ
    and the covariance weight ν are the anti-collapse switches (0 = off).
    """

    name: ClassVar[str] = "vicreg"
    summary: ClassVar[str] = "variance + invariance + covariance regularisation (Bardes et al. 2022)"
    config_class: ClassVar[type[MethodConfig]] = VICRegConfig
    projector_preset: ClassVar[str] = "vicreg"
    switches: ClassVar[tuple[str, ...]] = ("variance_weight", "covariance_weight", "projector_bn")

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        v1, v2 = self.two_views(views, "vicreg")
        o1, o2 = self.embed(v1), self.embed(v2)
        c: VICRegConfig = self.config  # type: ignore[assignment]
        loss, terms = vicreg(
            o1["emb"], o2["emb"], c.invariance_weight, c.variance_weight, c.covariance_weight, return_terms=True
        )  # type: ignore[misc]
        return MethodOutput(loss, o1, dict(terms))

    def collapse_loss(self, batch_size: int) -> float:
        """Identical embeddings: no invariance or covariance, and every dimension's std is 0, so
        L = μ·(γ − √ε) with γ = 1, ε = 1e-4 (0 when the variance term is off)."""
        return self.config.variance_weight * (1.0 - math.sqrt(1e-4))  # type: ignore[attr-defined]

    def collapse_hints(self) -> list[str]:
        hints = super().collapse_hints()
        c: VICRegConfig = self.config  # type: ignore[assignment]
        if c.variance_weight == 0:
            hints.append("method.variance_weight=0: nothing keeps the per-dimension spread up")
        if c.covariance_weight == 0:
            hints.append("method.covariance_weight=0: nothing decorrelates the dimensions")
        return hints
