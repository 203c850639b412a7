"""FALCON / CPLearn: codes from a fixed Rademacher dictionary; prior matching + cross-view invariance."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from collapselab import distributed
from collapselab._validation import InputError, check_number
from collapselab.diagnostics.clusters import code_geometry, code_usage
from collapselab.evaluation.clustering import code_clustering
from collapselab.losses import falcon_from_logits, falcon_temperature
from collapselab.methods.base import (
    MethodConfig,
    MethodOutput,
    SSLMethod,
    register_method,
)
from collapselab.models import FALCONProjector, RademacherDictionary


@dataclass
class FALCONConfig(MethodConfig):
    """FALCON defaults. Projector h = tanh(BN(Linear(z))) of width ``projector_out_dim`` = f,
    ``n_codes`` = c fixed ±1 code words (seeded by ``dictionary_seed``, stored as packed bits),
    β, the prior direction, and τ from (f, c, global batch, ε), or ``temperature`` when given
    (required by the paper's ``projector_variant=l2``). Defaults f = 2,048, c = 16,384, β = 1,
    reverse KL follow the official CIFAR recipe (github emsansone/CPLearn,
    ``scripts/pretrain/cifar/cplearn.yaml``). No predictor, stop-gradient or EMA: collapse is
    prevented by the objective."""

    name: str = "falcon"
    projector_out_dim: int | None = 2048
    projector_variant: str = "tanh"
    n_codes: int = 16384
    beta: float = 1.0
    prior_kl: str = "reverse"
    temperature: float | None = None
    eps: float = 1e-8
    dictionary_seed: int = 0

    def validate(self) -> None:
        super().validate()
        if self.projector_variant not in ("tanh", "l2"):
            raise InputError(f"method.projector_variant must be 'tanh' or 'l2', got {self.projector_variant!r}")
        if self.projector_variant == "l2" and self.temperature is None:
            raise InputError("method.projector_variant=l2 (the paper's projector) needs an explicit method.temperature")
        if self.temperature is not None:
            check_number(self.temperature, "method.temperature", positive=True)
        if self.n_codes < 2:
            raise InputError(f"method.n_codes must be >= 2, got {self.n_codes}")
        check_number(self.eps, "method.eps", positive=True)
        if self.eps * (self.n_codes - 1) >= 1:
            raise InputError(f"method.eps·(n_codes − 1) must be < 1, got eps={self.eps}, n_codes={self.n_codes}")
        if self.prior_kl not in ("reverse", "forward"):
            raise InputError(f"method.prior_kl must be 'reverse' or 'forward', got {self.prior_kl!r}")
        check_number(self.beta, "method.beta")
        if not self.projector_bn:
            raise InputError("method.projector_bn=false: FALCON's projector is Linear → BN → tanh; its BN is part of the method")


@register_method
class FALCON(SSLMethod):
    """Sansone, Lebailly & Tuytelaars, "Collapse-Proof Non-Contrastive SSL", ICML 2025.

    L = ½[KL(p̄₂‖u) + β·CE(p₂, q₁)] + ½[KL(p̄₁‖u) + β·CE(p₁, q₂)], codes = softmax(h W / τ) with W
    a fixed ±1 dictionary (see :func:`collapselab.losses.falcon`). hW is computed blockwise from
    the packed dictionary (:class:`collapselab.models.RademacherDictionary`), so c = 65,536 costs
    f·c/8 bytes. ``embed`` adds ``codes`` (code probabilities) for the cluster-collapse monitor;
    :meth:`probe_metrics` logs decorrelation, block structure and argmax-code NMI each epoch.
    """

    name: ClassVar[str] = "falcon"
    summary: ClassVar[str] = "codes from a fixed +-1 dictionary, prior matching + invariance (Sansone et al. 2025)"
    config_class: ClassVar[type[MethodConfig]] = FALCONConfig
    switches: ClassVar[tuple[str, ...]] = ("beta", "prior_kl", "n_codes")

    def __init__(self, config: FALCONConfig, backbone: nn.Module) -> None:
        super().__init__(config, backbone)
        self.config: FALCONConfig = config
        generator = torch.Generator().manual_seed(config.dictionary_seed)
        self.dictionary = RademacherDictionary(self.projector.out_dim, config.n_codes, generator)
        self.train_batch: int | None = None  # the global batch of the last training step (sets τ)

    def build_projector(self, in_dim: int) -> nn.Module:  # type: ignore[override]
        c: FALCONConfig = self.config  # type: ignore[assignment]
        return FALCONProjector(in_dim, int(c.projector_out_dim or 2048), variant=c.projector_variant)  # type: ignore[arg-type]

    def temperature(self, n: int) -> float:
        """τ = f/(√n·log((1 − ε(c−1))/ε)) with n the global training batch, or the configured τ."""
        c = self.config
        if c.temperature is not None:
            return float(c.temperature)
        return falcon_temperature(self.projector.out_dim, c.n_codes, n, c.eps)

    def collapse_loss(self, batch_size: int) -> float | None:
        """Identical embeddings give every sample the same code distribution q, so p̄ = q and
        (reverse prior) L = KL(q ‖ u) + β·H(q) = log c + (β − 1)·H(q): exactly log c for β = 1
        whatever q is; for other β it depends on q, so None."""
        c = self.config
        return math.log(c.n_codes) if c.beta == 1.0 and c.prior_kl == "reverse" else None

    def logits(self, h: torch.Tensor, n: int) -> torch.Tensor:
        return self.dictionary(h) / self.temperature(n)

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().embed(x)
        out["codes"] = F.softmax(self.logits(out["emb"], self.train_batch or x.shape[0]), dim=1)
        return out

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        v1, v2 = self.two_views(views, "falcon")
        o1, o2 = SSLMethod.embed(self, v1), SSLMethod.embed(self, v2)
        self.train_batch = distributed.global_batch_size(v1.shape[0], v1.device)
        c = self.config
        loss, terms = falcon_from_logits(
            self.logits(o1["emb"], self.train_batch), self.logits(o2["emb"], self.train_batch),
            c.beta, c.prior_kl, return_terms=True,  # type: ignore[arg-type]
        )
        return MethodOutput(loss, o1, dict(terms))

    def probe_metrics(self, probe: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, float]:
        """Code usage, HᵀH off-diagonal energy, HHᵀ block structure and argmax-code NMI/ACC."""
        codes = probe["codes"].float().cpu()
        out = {k: v for k, v in code_usage(codes).items() if k in ("code_used_fraction", "code_perplexity")}
        out.update(code_geometry(probe["emb"].float().cpu(), codes))
        if labels is not None:
            keep = labels.cpu() >= 0
            if int(keep.sum()) >= 2:
                scores = code_clustering(codes[keep], labels.cpu()[keep])
                out.update({k: scores[k] for k in ("codes_nmi", "codes_acc") if k in scores})
        return out
