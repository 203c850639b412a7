"""Composite geometric objective: build-your-own loss from weighted terms (alignment, variance,
covariance, uniformity) plus the predictor / stop-gradient / EMA switches, and an optional
uncertainty band σ(x) beside the embedding with its likelihood and prior terms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from collapselab._validation import InputError
from collapselab.losses.band import band_floor, band_kl_prior, band_nll
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
from collapselab.models.band import BAND_PARAMETRISATIONS, BAND_SHAPES, BandHead

ALIGNMENTS = ("mse", "cosine")
WEIGHTS = ("alignment_weight", "variance_weight", "covariance_weight", "uniformity_weight")
BANDS = ("off", *BAND_SHAPES)
BAND_PRIORS = ("kl", "floor")
BAND_WEIGHTS = ("band_nll_weight", "band_prior_weight")


@dataclass
class CompositeConfig(SiameseConfig):
    """Default = VICReg's objective (λ = μ = 25, ν = 1, MSE alignment) with no predictor, no
    stop-gradient and no EMA: the plain objective, minimised directly. A weight of 0 removes its
    term (not computed). ``uniformity_t``: Wang & Isola's t; ``gamma``, ``eps``: the variance hinge.

    The band (:class:`collapselab.models.band.BandHead`): ``band`` ``off`` | ``scalar`` (one width
    per input) | ``diagonal`` (one per dimension); ``band_param`` ``softplus`` | ``exp``;
    ``band_init`` the width every input starts with (in μ's units; 1.0 = γ, the spread the
    variance term asks for); ``band_hidden_dim`` the head's hidden width. ``band_nll_weight``
    weights the Gaussian likelihood of the other view's target under the band (it replaces or
    joins the alignment term and goes through the same predictor / stop-gradient / EMA
    switches); ``band_prior_weight`` the ``band_prior`` term, ``kl`` (to a band of width
    σ_ref = ``band_ref``) or ``floor`` (a log hinge at σ_ref), in μ's units like ``band_init``
    (0.5 = half the per-dimension spread γ = 1 the variance term asks of μ). The band's
    likelihood plus a KL prior follows VI-SimSiam (Nakamura, Okada & Taniguchi, ICCV 2023) in
    scoring the other view under this view's distribution. It differs in three ways: a Gaussian
    in R^D instead of a distribution on the sphere, a prior centred on μ, and optional predictor
    and stop-gradient (``collapselab.losses.band`` compares it with MCInfoNCE as well)."""

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
    band: str = "off"
    band_param: str = "softplus"
    band_init: float = 1.0
    band_hidden_dim: int = 128
    band_nll_weight: float = 0.0
    band_prior: str = "kl"
    band_prior_weight: float = 0.0
    band_ref: float = 0.5

    def validate(self) -> None:
        super().validate()
        self._validate_band()
        if self.alignment not in ALIGNMENTS:
            raise InputError(f"method.alignment must be one of {', '.join(ALIGNMENTS)}, got {self.alignment!r}")
        for key in (*WEIGHTS, *BAND_WEIGHTS):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InputError(f"method.{key} must be a finite number >= 0, got {value!r}")
        if all(getattr(self, key) == 0 for key in (*WEIGHTS, "band_nll_weight")):
            raise InputError(f"method: every weight is 0 ({', '.join((*WEIGHTS, 'band_nll_weight'))}); nothing to minimise")
        for key in ("uniformity_t", "gamma", "eps"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise InputError(f"method.{key} must be a positive finite number, got {value!r}")
        if self.alignment_weight == 0 and self.band_nll_weight == 0 and (
                self.predictor != "none" or ema_base(self.ema) is not None):
            raise InputError(
                "method.predictor and method.ema act only through the alignment term (or the band's "
                "likelihood): with method.alignment_weight=0 set method.predictor=none and method.ema=off"
            )

    def _validate_band(self) -> None:
        for key, allowed in (("band", BANDS), ("band_param", BAND_PARAMETRISATIONS), ("band_prior", BAND_PRIORS)):
            if getattr(self, key) not in allowed:
                raise InputError(f"method.{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        for key in ("band_init", "band_ref"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise InputError(f"method.{key} must be a positive finite number, got {value!r}")
        if isinstance(self.band_hidden_dim, bool) or not isinstance(self.band_hidden_dim, int) or self.band_hidden_dim < 1:
            raise InputError(f"method.band_hidden_dim must be a positive integer, got {self.band_hidden_dim!r}")
        weights = [key for key in BAND_WEIGHTS if getattr(self, key) != 0]
        if self.band == "off" and weights:
            raise InputError(f"method.{weights[0]} acts on the band: set method.band=scalar or diagonal, "
                             f"or the weight to 0")
        if self.band != "off" and not weights:
            raise InputError(f"method.band={self.band} with band_nll_weight=0 and band_prior_weight=0: nothing "
                             f"trains the band; give one of them a weight, or set method.band=off")


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

    With ``band`` on, ``embed`` also returns ``band`` = σ(x) from a head on the backbone
    features (the monitor's ``band`` mode reads it) and two more terms join the sum::

          + w_nll·½[ℓ(p₁, t₂, σ₁) + ℓ(p₂, t₁, σ₂)]    ℓ = mean ½[(t − p)²/σ² + log σ²]
          + w_pr·½[π(σ₁, σ_ref) + π(σ₂, σ_ref)]      π = KL(N(·, σ²) ‖ N(·, σ_ref²)) or log floor

    with σ_ref = ``band_ref`` (in μ's units). σ_i is the band of view i; the
    likelihood scores the other view's target under a Gaussian around this view's prediction,
    so the band must cover the disagreement that the predictor leaves. At perfect agreement the
    band settles at σ_ref·√(1 − w_nll/w_pr) (KL) or at the floor, and only if w_pr > w_nll
    (:mod:`collapselab.losses.band`).

    Sources: Bardes, Ponce & LeCun, "VICReg", ICLR 2022 (s, v, c); Wang & Isola, ICML 2020
    (alignment, uniformity); Grill et al., "BYOL", NeurIPS 2020 (predictor, EMA, cosine form);
    Kendall & Gal, NeurIPS 2017 (the band's likelihood); Oh et al., "Hedged Instance
    Embeddings", ICLR 2019 (a Gaussian band per input with a KL regulariser, there to N(0, I)).
    """

    name: ClassVar[str] = "composite"
    summary: ClassVar[str] = "weighted alignment + variance + covariance + uniformity, with the asymmetry switches"
    config_class: ClassVar[type[MethodConfig]] = CompositeConfig
    projector_preset: ClassVar[str] = "vicreg"
    predictor_preset: ClassVar[str] = "byol_predictor"
    switches: ClassVar[tuple[str, ...]] = (*WEIGHTS, "alignment", "predictor", "stop_gradient", "ema", "projector_bn",
                                           "band", *BAND_WEIGHTS)

    def __init__(self, config: CompositeConfig, backbone: torch.nn.Module) -> None:
        super().__init__(config, backbone)
        self.band_head = None if config.band == "off" else BandHead(
            int(backbone.out_dim), self.projector.out_dim, shape=config.band, param=config.band_param,
            hidden_dim=int(config.band_hidden_dim), init_width=float(config.band_init))

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``repr``, ``emb`` = μ(x) and, with the band on, ``band`` = σ(x) (B, D) or (B, 1)."""
        out = super().embed(x)
        if self.band_head is not None:
            out["band"] = self.band_head(out["repr"])
        return out

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        c: CompositeConfig = self.config  # type: ignore[assignment]
        pair = self.two_views(views, "composite")
        if c.alignment_weight > 0 or c.band_nll_weight > 0:
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
        scalars: dict[str, torch.Tensor] = {}
        if self.band_head is not None:
            s1, s2 = online[0]["band"], online[1]["band"]
            if c.band_nll_weight > 0:
                terms["band_nll"] = (band_nll(online[0]["pred"], targets[1], s1)
                                     + band_nll(online[1]["pred"], targets[0], s2)) / 2
            if c.band_prior_weight > 0:
                prior = band_kl_prior if c.band_prior == "kl" else band_floor
                terms["band_prior"] = (prior(s1, c.band_ref) + prior(s2, c.band_ref)) / 2
            scalars["band_width"] = s1.detach().mean()
        loss = sum(getattr(c, f"{name}_weight") * term for name, term in terms.items())
        scalars.update({name: term.detach() for name, term in terms.items()})
        return MethodOutput(loss, online[0], scalars)  # type: ignore[arg-type]

    def collapse_loss(self, batch_size: int) -> float | None:
        """Identical embeddings: alignment 0 (MSE, or 2 − 2·cos with cos 1), covariance 0,
        uniformity log E exp(0) = 0, and each dimension's variance hinge γ − √ε, so
        L = w_var·(γ − √ε). None with the band's likelihood or prior: at collapse they depend on
        σ (½ log σ² is unbounded below), so no single value exists."""
        c: CompositeConfig = self.config  # type: ignore[assignment]
        if c.band != "off":
            return None
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
