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

    Multi-crop (more than two views, e.g. ``data.augment.views.local: {count: 4, size: 0.5}``):
    the first two views are the global crops and the only ones the target sees; every view's
    prediction is compared with the target of each global crop other than itself (the pairing
    of solo-learn's multi-crop BYOL and of DINO, Caron et al. 2021), and the pair sum is scaled
    by 2 / (number of pairs), so two views give the loss above exactly (range [0, 8] for any
    count). Not in the BYOL paper, which uses two views.
    """

    name: ClassVar[str] = "byol"
    summary: ClassVar[str] = "predictor + EMA target + stop-gradient, no negatives (Grill et al. 2020)"
    config_class: ClassVar[type[MethodConfig]] = BYOLConfig
    projector_preset: ClassVar[str] = "byol_projector"
    predictor_preset: ClassVar[str] = "byol_predictor"
    default_augment: ClassVar[str] = "byol"

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        online, targets = self.branches(self.two_views(views, "byol"))
        online += [self.online_branch(x) for x in views[2:]]
        stop = self.config.stop_gradient
        distances = [negative_cosine(online[j]["pred"], targets[i], stop_gradient=stop)
                     for i in range(2) for j in range(len(online)) if j != i]
        loss = sum(2 + 2 * d for d in distances) * (2 / len(distances))
        cosine = -torch.stack(distances).detach().mean()
        return MethodOutput(loss, online[0], {"cosine": cosine})

    def collapse_loss(self, batch_size: int) -> float:
        """A collapsed online branch whose prediction points at the (equally collapsed) target:
        cosine 1, so (2 − 2·1) + (2 − 2·1) = 0 — also the loss's minimum, which is why BYOL needs
        its asymmetry."""
        return 0.0
