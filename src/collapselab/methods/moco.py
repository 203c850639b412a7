"""MoCo v2: InfoNCE of online queries against EMA keys and a FIFO queue of past keys."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from collapselab._validation import InputError, check_number
from collapselab.losses import MoCoQueue, info_nce
from collapselab.methods.base import (
    MethodConfig,
    MethodOutput,
    SiameseConfig,
    SiameseMethod,
    register_method,
)


@dataclass
class MoCoConfig(SiameseConfig):
    """MoCo v2 defaults (Chen et al. 2020, "Improved Baselines..."): MLP head 2048 → 128 without
    BN, τ = 0.2, constant key-encoder momentum, no predictor. The paper's K = 65,536 and m = 0.999
    are for ImageNet; the default K = 4,096, m = 0.99 suit small datasets (solo-learn's CIFAR
    recipe uses m 0.99 → 1). ``symmetric``: both views serve as query (MoCo v3 style; the paper's
    loss is one-directional)."""

    name: str = "moco"
    projector_bn: bool = False
    predictor: str = "none"
    ema: Any = 0.99
    ema_final: float | None = None
    temperature: float = 0.2
    queue_size: int = 4096
    symmetric: bool = False

    def validate(self) -> None:
        super().validate()
        check_number(self.temperature, "method.temperature", positive=True)
        if self.queue_size < 1:
            raise InputError(f"method.queue_size must be >= 1, got {self.queue_size}")


@register_method
class MoCo(SiameseMethod):
    """He et al., "Momentum Contrast", CVPR 2020 (v2: Chen, Fan, Girshick & He 2020).

    L = mean_b −log exp(q·k₊/τ) / (exp(q·k₊/τ) + Σ_{i≤K} exp(q·k_i/τ)), q = online query of view 1,
    k₊ = EMA key of view 2, k_i = the queue (keys of earlier batches, gathered over ranks).
    At collapse L = log(K + 1).
    """

    name: ClassVar[str] = "moco"
    summary: ClassVar[str] = "InfoNCE against a queue of EMA-encoder keys (He et al. 2020, v2)"
    config_class: ClassVar[type[MethodConfig]] = MoCoConfig
    projector_preset: ClassVar[str] = "simclr"
    switches: ClassVar[tuple[str, ...]] = ("ema", "predictor", "projector_bn")

    def __init__(self, config: MoCoConfig, backbone: nn.Module) -> None:
        super().__init__(config, backbone)
        self.config: MoCoConfig = config
        self.queue = MoCoQueue(self.projector.out_dim, config.queue_size, config.temperature)

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        online, keys = self.branches(self.two_views(views, "moco"))
        queue = self.queue.queue.clone()
        tau = self.config.temperature
        loss = info_nce(online[0]["pred"], keys[1], queue, tau)
        if self.config.symmetric:
            loss = (loss + info_nce(online[1]["pred"], keys[0], queue, tau)) / 2
            self.queue.enqueue(torch.cat([keys[1], keys[0]]))
        else:
            self.queue.enqueue(keys[1])
        return MethodOutput(loss, online[0], {})

    def collapse_loss(self, batch_size: int) -> float:
        """Query, positive key and all K queued keys parallel: K + 1 equal logits, so
        L = log(K + 1)."""
        return math.log(self.config.queue_size + 1)

    def collapse_hints(self) -> list[str]:
        hints = super().collapse_hints()
        if self.target is None:
            hints.append("method.ema=off: keys from the current encoder are inconsistent with the queue (MoCo Table 1, m = 0)")
        return hints
