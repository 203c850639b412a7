"""SimSiam: a predictor against the stop-gradient projection of the other view, no EMA."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from collapselab.losses import symmetric_negative_cosine
from collapselab.methods.base import (
    MethodConfig,
    MethodOutput,
    SiameseConfig,
    SiameseMethod,
    register_method,
)


@dataclass
class SimSiamConfig(SiameseConfig):
    """SimSiam defaults: MLP bottleneck predictor, stop-gradient, no EMA (``ema=off``)."""

    name: str = "simsiam"
    ema: Any = "off"
    ema_final: float | None = None


@register_method
class SimSiam(SiameseMethod):
    """Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021.

    L = ½D(p₁, sg(z₂)) + ½D(p₂, sg(z₁)), D(p, z) = −⟨p/‖p‖, z/‖z‖⟩ (eq. 1–2); ∈ [−1, 1], and
    −1 is also what a collapsed network reaches. ``stop_gradient=false`` is the paper's Fig. 2
    ablation (collapses).
    """

    name: ClassVar[str] = "simsiam"
    summary: ClassVar[str] = "predictor + stop-gradient, no EMA, no negatives (Chen & He 2021)"
    config_class: ClassVar[type[MethodConfig]] = SimSiamConfig
    projector_preset: ClassVar[str] = "simsiam_projector"
    predictor_preset: ClassVar[str] = "simsiam_predictor"

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        online, targets = self.branches(self.two_views(views, "simsiam"))
        loss = symmetric_negative_cosine(
            online[0]["pred"], online[1]["pred"], targets[0], targets[1], stop_gradient=self.config.stop_gradient
        )
        return MethodOutput(loss, online[0], {"cosine": -loss.detach()})

    def collapse_loss(self, batch_size: int) -> float:
        """Every prediction parallel to its (collapsed) target: negative cosine −1, the loss's
        minimum (Chen & He 2021, Sec. 4)."""
        return -1.0
