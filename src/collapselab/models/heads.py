"""Heads stacked on a backbone: projector/predictor MLPs, a settable linear predictor, the
FALCON projector, L2-normalised prototypes and the DINO head.

All heads map (B, in_dim) → (B, out_dim) and expose ``in_dim`` / ``out_dim``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from collapselab._validation import InputError


def _check_dim(value: object, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def _check_features(x: torch.Tensor, dim: int, where: str) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputError(f"{where}: expected input of shape (B, {dim}), got {tuple(x.shape)}")


class MLPHead(nn.Module):
    """Projector / predictor MLP: (num_layers − 1) × [Linear → [BN] → ReLU] → Linear → [BN].

    Args:
        in_dim, hidden_dim, out_dim: widths; the hidden layers are all ``hidden_dim`` wide.
        num_layers: number of Linear layers (≥ 1; 1 is a single linear map).
        bn: BatchNorm1d after every hidden Linear. ``bn=False`` removes all of them (and
            ``last_bn`` must then be False too): one of the anti-collapse switches, since BN
            acts as an implicit restoring force near collapse (docs/theory.md §3, claim
            ``batchnorm-jacobian-inverse-spread``; Richemond et al. 2020, arXiv 2010.10241).
        last_bn: BatchNorm1d on the output (SimSiam's projector ends with one).
        last_bn_affine: learnable γ/β on that output BN (SimSiam's official code: False).

    Hidden Linears carry no bias when BN follows (it would be cancelled); the last Linear has a
    bias unless ``last_bn``. Shapes: (B, in_dim) → (B, out_dim). Under BN, B ≥ 2 in training.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        bn: bool = True,
        last_bn: bool = False,
        last_bn_affine: bool = True,
    ) -> None:
        super().__init__()
        where = "MLPHead"
        for value, name in ((in_dim, "in_dim"), (hidden_dim, "hidden_dim"), (out_dim, "out_dim")):
            _check_dim(value, name, where)
        _check_dim(num_layers, "num_layers", where)
        if last_bn and not bn:
            raise InputError(
                f"{where}: last_bn=True with bn=False would keep a BatchNorm; set last_bn=False "
                "for a head without any BatchNorm"
            )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.num_layers, self.bn, self.last_bn = num_layers, bn, last_bn
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) → (B, out_dim)."""
        _check_features(x, self.in_dim, "MLPHead")
        return self.net(x)


# --------------------------------------------------------------------------- presets

# name: (paper kwargs, small kwargs, source). ``in_dim`` is always given by the caller.
_PRESETS: dict[str, tuple[dict, dict, str]] = {
    "simclr": (
        dict(hidden_dim=2048, out_dim=128, num_layers=2, bn=False),
        dict(hidden_dim=512, out_dim=128, num_layers=2, bn=False),
        "Chen et al. 2020 (SimCLR) Sec. 2.1: g(h) = W2·ReLU(W1·h), 2048 → 128; the official TF "
        "code and SimCLR v2 add BN in the hidden layer (pass bn=True)",
    ),
    "byol_projector": (
        dict(hidden_dim=4096, out_dim=256, num_layers=2, bn=True),
        dict(hidden_dim=512, out_dim=128, num_layers=2, bn=True),
        "Grill et al. 2020 (BYOL) Sec. 3.3: Linear 4096 → BN → ReLU → Linear 256",
    ),
    "byol_predictor": (
        dict(hidden_dim=4096, out_dim=256, num_layers=2, bn=True),
        dict(hidden_dim=512, out_dim=128, num_layers=2, bn=True),
        "Grill et al. 2020 (BYOL) Sec. 3.3: the predictor has the projector's architecture",
    ),
    "simsiam_projector": (
        dict(
            hidden_dim=2048, out_dim=2048, num_layers=3, bn=True, last_bn=True, last_bn_affine=False
        ),
        dict(
            hidden_dim=512, out_dim=512, num_layers=3, bn=True, last_bn=True, last_bn_affine=False
        ),
        "Chen & He 2021 (SimSiam) Sec. 4: 3 layers of 2048 with BN on every layer including the "
        "output (official code: output BN without affine)",
    ),
    "simsiam_predictor": (
        dict(hidden_dim=512, out_dim=2048, num_layers=2, bn=True),
        dict(hidden_dim=128, out_dim=512, num_layers=2, bn=True),
        "Chen & He 2021 (SimSiam) Sec. 4: bottleneck 2048 → 512 (BN, ReLU) → 2048, no BN at output",
    ),
    "swav": (
        dict(hidden_dim=2048, out_dim=128, num_layers=2, bn=True),
        dict(hidden_dim=512, out_dim=128, num_layers=2, bn=True),
        "Caron et al. 2020 (SwAV), official code: Linear 2048 → BN → ReLU → Linear 128, then "
        "L2-normalised and scored against the prototypes",
    ),
    "barlow_twins": (
        dict(hidden_dim=8192, out_dim=8192, num_layers=3, bn=True),
        dict(hidden_dim=512, out_dim=512, num_layers=3, bn=True),
        "Zbontar et al. 2021 (Barlow Twins) Sec. 2: 3 linear layers of 8192, BN + ReLU between",
    ),
    "vicreg": (
        dict(hidden_dim=8192, out_dim=8192, num_layers=3, bn=True),
        dict(hidden_dim=512, out_dim=512, num_layers=3, bn=True),
        "Bardes et al. 2022 (VICReg) Sec. 4.1: expander of 3 layers of 8192, BN + ReLU between",
    ),
}


def head_presets() -> dict[str, str]:
    """Preset names with their source line."""
    return {name: source for name, (_, _, source) in _PRESETS.items()}


def mlp_head_preset(
    name: str, in_dim: int, size: Literal["paper", "small"] = "paper", **overrides: object
) -> MLPHead:
    """An :class:`MLPHead` with a method's published shape (``size="paper"``) or a small one for
    tiny data and CPUs (``size="small"``: widths 512/128). ``overrides`` replace any field;
    ``bn=False`` also turns ``last_bn`` off, so the head has no BatchNorm at all.

    Names: ``simclr``, ``byol_projector``, ``byol_predictor``, ``simsiam_projector``,
    ``simsiam_predictor``, ``barlow_twins``, ``vicreg`` (see :func:`head_presets` for sources).
    For predictors, ``in_dim`` is the projector's ``out_dim``.
    """
    if name not in _PRESETS:
        import difflib

        near = difflib.get_close_matches(name, list(_PRESETS), n=2)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise InputError(
            f"mlp_head_preset: unknown preset {name!r}; {hint}known: {', '.join(_PRESETS)}"
        )
    if size not in ("paper", "small"):
        raise InputError(f"mlp_head_preset: size must be 'paper' or 'small', got {size!r}")
    paper, small, _ = _PRESETS[name]
    kwargs = dict(paper if size == "paper" else small)
    unknown = set(overrides) - {
        "hidden_dim",
        "out_dim",
        "num_layers",
        "bn",
        "last_bn",
        "last_bn_affine",
    }
    if unknown:
        raise InputError(f"mlp_head_preset: unknown override(s) {sorted(unknown)}")
    kwargs.update(overrides)
    if not kwargs.get("bn", True):
        kwargs["last_bn"] = False
    return MLPHead(in_dim, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- linear predictor


class LinearPredictor(nn.Module):
    """A plain d×d linear map p = W z (no bias), whose weight can be set from outside.

    DirectPred (Tian, Chen & Ganguli 2021) sets W = U diag(p) Uᵀ from the eigendecomposition of
    the running correlation of projector outputs, each step and without gradient: use
    ``trainable=False`` and :meth:`set_weight`. ``init="identity"`` starts at W = I,
    ``"random"`` at PyTorch's default Linear init. Shapes: (B, dim) → (B, dim).
    """

    def __init__(
        self, dim: int, init: Literal["identity", "random"] = "identity", trainable: bool = True
    ) -> None:
        super().__init__()
        _check_dim(dim, "dim", "LinearPredictor")
        if init not in ("identity", "random"):
            raise InputError(f"LinearPredictor: init must be 'identity' or 'random', got {init!r}")
        self.in_dim = self.out_dim = dim
        self.linear = nn.Linear(dim, dim, bias=False)
        if init == "identity":
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(dim))
        self.linear.weight.requires_grad_(trainable)

    @property
    def weight(self) -> torch.Tensor:
        """The (dim, dim) matrix W."""
        return self.linear.weight

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Copy a (dim, dim) matrix into W (cast to W's dtype and device)."""
        if not isinstance(weight, torch.Tensor) or weight.shape != self.linear.weight.shape:
            shape = (
                tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            )
            raise InputError(
                f"LinearPredictor.set_weight: expected a tensor of shape {tuple(self.linear.weight.shape)}, "
                f"got {shape}"
            )
        if not bool(torch.isfinite(weight).all()):
            raise InputError("LinearPredictor.set_weight: weight has NaN or Inf entries")
        self.linear.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim) → (B, dim), p = x Wᵀ."""
        _check_features(x, self.in_dim, "LinearPredictor")
        return self.linear(x)


# --------------------------------------------------------------------------- FALCON projector


class FALCONProjector(nn.Module):
    """FALCON / CPLearn projector: a = BN(Linear(z)) ∈ R^f, then one of

    - ``variant="tanh"`` (official code, github emsansone/CPLearn ``solo/methods/cplearn.py``):
      h = tanh(a), every entry in [−1, 1]. Pairs with the code's temperature
      τ = f/(√n·log((1 − ε(c−1))/ε)) (:func:`collapselab.losses.falcon_temperature`).
    - ``variant="l2"`` (the paper, Sansone, Lebailly & Tuytelaars, ICML 2025, arXiv 2410.04959):
      h_b = √(f/n) · a_b / ‖a_b‖₂, each row rescaled to norm exactly √(f/n), so that
      Σ_b ‖h_b‖² = f = tr(I_f), the trace of the decorrelated target HᵀH = I. ``n`` is
      ``batch_size`` if given (e.g. the global batch under DDP), else the rows of the input.
      The loss's temperature must then be passed explicitly (the paper's pairing).

    Linear keeps its bias (as the official code); BN is affine, ε = 1e-5.
    Shapes: (B, in_dim) → (B, dim); B ≥ 2 in training (BN).
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        variant: Literal["tanh", "l2"] = "tanh",
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_dim(in_dim, "in_dim", "FALCONProjector")
        _check_dim(dim, "dim", "FALCONProjector")
        if variant not in ("tanh", "l2"):
            raise InputError(f"FALCONProjector: variant must be 'tanh' or 'l2', got {variant!r}")
        if batch_size is not None:
            _check_dim(batch_size, "batch_size", "FALCONProjector")
        self.in_dim, self.out_dim = in_dim, dim
        self.variant = variant
        self.batch_size = batch_size
        self.linear = nn.Linear(in_dim, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) → (B, dim)."""
        _check_features(x, self.in_dim, "FALCONProjector")
        a = self.bn(self.linear(x))
        if self.variant == "tanh":
            return torch.tanh(a)
        n = self.batch_size if self.batch_size is not None else x.shape[0]
        return math.sqrt(self.out_dim / n) * F.normalize(a, dim=1)


# --------------------------------------------------------------------------- prototypes


class Prototypes(nn.Module):
    """K prototype vectors on the unit sphere scoring L2-normalised embeddings (SwAV, DINO).

    scores = normalize(x) · Cᵀ with C (K, dim) the prototypes. Two conventions:

    - SwAV (Caron et al. 2020, official code): keep C unit-norm by calling :meth:`normalize_`
      before each step (in place, outside autograd); ``weight_norm=False``.
    - DINO (Caron et al. 2021): a weight-normalised last layer with the norm fixed at 1, i.e.
      C/‖C‖ row-wise inside the forward, so gradients see the normalisation; ``weight_norm=True``.

    ``normalize_input=False`` scores raw x. Shapes: (B, dim) → (B, n_prototypes).
    """

    def __init__(
        self,
        dim: int,
        n_prototypes: int,
        normalize_input: bool = True,
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        _check_dim(dim, "dim", "Prototypes")
        _check_dim(n_prototypes, "n_prototypes", "Prototypes")
        self.in_dim, self.out_dim = dim, n_prototypes
        self.normalize_input = normalize_input
        self.weight_norm = weight_norm
        self.weight = nn.Parameter(torch.empty(n_prototypes, dim))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.weight, -bound, bound)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Rescale every prototype (row of ``weight``) to unit L2 norm, in place."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim) → (B, n_prototypes) cosine-style scores."""
        _check_features(x, self.in_dim, "Prototypes")
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        weight = F.normalize(self.weight, dim=1) if self.weight_norm else self.weight
        return x @ weight.T


# --------------------------------------------------------------------------- DINO head


class DINOBottleneck(nn.Sequential):
    """The MLP of :class:`DINOHead`: (num_layers − 1) × [Linear → [BN] → GELU] → Linear to the
    bottleneck; every Linear has a bias (the official code's layers). Shapes: (B, in_dim) → (B, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, bn: bool) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim))
            if bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, in_dim) → (B, out_dim)."""
        _check_features(x, self.in_dim, "DINOHead")
        return super().forward(x)


class DINOHead(nn.Module):
    """DINO's projection head: MLP → L2-normalise → weight-normalised linear layer to K outputs.

    logits_k = g_k · ⟨z/‖z‖, v_k/‖v_k‖⟩,  z = MLP(x) ∈ R^bottleneck,  k = 1..K (``out_dim``).

    Source: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
    Sec. 3.1 and App.; official code facebookresearch/dino ``vision_transformer.py`` ``DINOHead``:
    3 layers, hidden 2048, bottleneck 256, GELU, no BatchNorm (``use_bn_in_head=False``), MLP
    weights truncated normal (std 0.02) with zero biases; the last layer is
    ``weight_norm(Linear(bottleneck, K, bias=False))`` with g filled with 1 and frozen when
    ``norm_last_layer`` (default), so every row v_k/‖v_k‖ is a unit prototype.

    Implementation: the last layer is :class:`Prototypes` with ``weight_norm=True`` (rows
    normalised inside the forward, so gradients see the normalisation, as ``weight_norm``; its
    initial directions are uniform in [−1/√d, 1/√d]^d, the distribution of the official default
    Linear init). ``norm_last_layer=False`` adds the learnable norms g (K, 1), initialised at 1
    (2-D as the official ``weight_g``, so they get weight decay like it).

    Attributes: ``mlp`` (:class:`DINOBottleneck`), ``last_layer`` (:class:`Prototypes`),
    ``last_layer_norm`` (g, or None). Shapes: (B, in_dim) → (B, out_dim).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        where = "DINOHead"
        for value, name in ((in_dim, "in_dim"), (out_dim, "out_dim"), (hidden_dim, "hidden_dim"),
                            (bottleneck_dim, "bottleneck_dim"), (num_layers, "num_layers")):
            _check_dim(value, name, where)
        self.in_dim, self.out_dim, self.bottleneck_dim = in_dim, out_dim, bottleneck_dim
        self.mlp = DINOBottleneck(in_dim, hidden_dim, bottleneck_dim, num_layers, bn)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = Prototypes(bottleneck_dim, out_dim, normalize_input=True, weight_norm=True)
        self.last_layer_norm = None if norm_last_layer else nn.Parameter(torch.ones(out_dim, 1))

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The parameters DINO freezes during the first epoch(s): prototypes v and norms g."""
        params = [self.last_layer.weight]
        return params if self.last_layer_norm is None else [*params, self.last_layer_norm]

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from bottleneck outputs: (B, bottleneck_dim) → (B, out_dim)."""
        logits = self.last_layer(z)
        return logits if self.last_layer_norm is None else logits * self.last_layer_norm.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) → (B, out_dim) logits."""
        return self.scores(self.mlp(x))


__all__ = [
    "DINOBottleneck",
    "DINOHead",
    "FALCONProjector",
    "LinearPredictor",
    "MLPHead",
    "Prototypes",
    "head_presets",
    "mlp_head_preset",
]
