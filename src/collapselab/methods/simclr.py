"""SimCLR: NT-Xent over the 2N views of a batch (negatives gathered from every rank)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from collapselab._validation import check_number
from collapselab.losses import nt_xent
from collapselab.methods.base import (
    MethodConfig,
    MethodOutput,
    SSLMethod,
    register_method,
)


@dataclass
class SimCLRConfig(MethodConfig):
    """SimCLR defaults: 2-layer MLP head without BN (paper §2.1), τ = 0.5 (the paper's CIFAR-10 value)."""

    name: str = "simclr"
    projector_bn: bool = False
    temperature: float = 0.5

    def validate(self) -> None:
        super().validate()
        check_number(self.temperature, "method.temperature", positive=True)


@register_method
class SimCLR(SSLMethod):
    """Chen et al., "A Simple Framework for Contrastive Learning", ICML 2020.

    L = (1/2N) Σ_i −log exp(sim(u_i, u_pos(i))/τ) / Σ_{k≠i} exp(sim(u_i, u_k)/τ) over u = [z₁; z₂]
    (eq. 1). At collapse L = log(2N − 1).
    """

    name: ClassVar[str] = "simclr"
    summary: ClassVar[str] = "contrastive NT-Xent with in-batch negatives (Chen et al. 2020)"
    config_class: ClassVar[type[MethodConfig]] = SimCLRConfig
    projector_preset: ClassVar[str] = "simclr"

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        v1, v2 = self.two_views(views, "simclr")
        o1, o2 = self.embed(v1), self.embed(v2)
        loss = nt_xent(o1["emb"], o2["emb"], temperature=self.config.temperature)  # type: ignore[attr-defined]
        return MethodOutput(loss, o1, {})

    def collapse_loss(self, batch_size: int) -> float:
        """NT-Xent with all 2N views parallel: every logit equals 1/τ, so ℓ_i = log(2N − 1)."""
        return math.log(2 * batch_size - 1)
