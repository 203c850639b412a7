"""Barlow Twins: drive the cross-correlation of the two views' embeddings to the identity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from collapselab._validation import check_number
from collapselab.losses import barlow_twins
from collapselab.methods.base import (
    MethodConfig,
    MethodOutput,
    SSLMethod,
    register_method,
)


@dataclass
class BarlowTwinsConfig(MethodConfig):
    """Barlow Twins defaults: 3-layer projector with BN, λ = 5e-3 (paper §2)."""

    name: str = "barlow_twins"
    lambda_offdiag: float = 5e-3

    def validate(self) -> None:
        super().validate()
        check_number(self.lambda_offdiag, "method.lambda_offdiag")


@register_method
class BarlowTwins(SSLMethod):
    """Zbontar et al., "Barlow Twins", ICML 2021.

    L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij², C = cross-correlation of the batch-standardised
    embeddings (eq. 1–2). λ = ``lambda_offdiag`` is the redundancy-reduction switch (0 = off).
    """

    name: ClassVar[str] = "barlow_twins"
    summary: ClassVar[str] = "redundancy reduction: cross-correlation -> identity (Zbontar et al. 2021)"
    config_class: ClassVar[type[MethodConfig]] = BarlowTwinsConfig
    projector_preset: ClassVar[str] = "barlow_twins"
    switches: ClassVar[tuple[str, ...]] = ("lambda_offdiag", "projector_bn")

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        v1, v2 = self.two_views(views, "barlow_twins")
        o1, o2 = self.embed(v1), self.embed(v2)
        loss, terms = barlow_twins(o1["emb"], o2["emb"], self.config.lambda_offdiag, return_terms=True)  # type: ignore[attr-defined, misc]
        return MethodOutput(loss, o1, dict(terms))

    def collapse_loss(self, batch_size: int) -> float:
        """Identical embeddings standardise to 0, so C = 0 and L = Σ_i (1 − 0)² = D."""
        return float(self.projector.out_dim)

    def collapse_hints(self) -> list[str]:
        hints = super().collapse_hints()
        if self.config.lambda_offdiag == 0:  # type: ignore[attr-defined]
            hints.append("method.lambda_offdiag=0: no redundancy reduction between dimensions")
        return hints
