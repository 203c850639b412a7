"""BYOL: predict an EMA target network's projection of the other view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from collapselab.losses import negative_cosine
from collapselab.methods.base import (
    MethodConfig,
    MethodOutput,
    SiameseConfig,
    SiameseMethod,
    register_method,
)


@dataclass
class BYOLConfig(SiameseConfig):
    """BYOL defaults: MLP predictor, EMA target τ 0.99 → 1 (cosine). The paper's τ_base = 0.996 is
    for 1,000-epoch ImageNet runs; short runs on small data use 0.99 (solo-learn's CIFAR recipe)."""

    name: str = "byol"
    ema: Any = 0.99
    ema_final: float | None = 1.0


@register_method
class BYOL(SiameseMethod):
    """Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020.

    L = Σ_{(i,j) ∈ {(1,2),(2,1)}} mean_b (2 − 2⟨p_i/‖p_i‖, ξ_j/‖ξ_j‖⟩)   (eq. 2, symmetrised),
    p_i = predictor(projector(backbone(v_i))), ξ_j = EMA target's projection of v_j. Range [0, 8].
    """

    name: ClassVar[str] = "byol"
    summary: ClassVar[str] = "predictor + EMA target + stop-gradient, no negatives (Grill et al. 2020)"
    config_class: ClassVar[type[MethodConfig]] = BYOLConfig
    projector_preset: ClassVar[str] = "byol_projector"
    predictor_preset: ClassVar[str] = "byol_predictor"
    default_augment: ClassVar[str] = "byol"

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        online, targets = self.branches(self.two_views(views, "byol"))
        stop = self.config.stop_gradient
        d12 = negative_cosine(online[0]["pred"], targets[1], stop_gradient=stop)
        d21 = negative_cosine(online[1]["pred"], targets[0], stop_gradient=stop)
        loss = (2 + 2 * d12) + (2 + 2 * d21)
        return MethodOutput(loss, online[0], {"cosine": -(d12 + d21).detach() / 2})

    def collapse_loss(self, batch_size: int) -> float:
        """A collapsed online branch whose prediction points at the (equally collapsed) target:
        cosine 1, so (2 − 2·1) + (2 − 2·1) = 0 — also the loss's minimum, which is why BYOL needs
        its asymmetry."""
        return 0.0
