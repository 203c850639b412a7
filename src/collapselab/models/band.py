"""The uncertainty band head: a width σ(x) > 0 beside the embedding mean μ(x).

A probabilistic embedding represents input x by N(μ(x), diag σ(x)²) instead of the point μ(x)
(Oh et al., "Modeling Uncertainty with Hedged Instance Embeddings", ICLR 2019; Shi & Jain,
"Probabilistic Face Embeddings", ICCV 2019). Here μ(x) is the method's projector output and the
band σ(x) comes from this small head on the backbone features, so the band is a function of the
input, not a fixed noise level. The terms that train it are in :mod:`collapselab.losses.band`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from collapselab._validation import InputError

BAND_SHAPES = ("scalar", "diagonal")
BAND_PARAMETRISATIONS = ("softplus", "exp")


def inverse_positive(width: float, param: str) -> float:
    """The pre-activation a with positive(a) = ``width``: log(expm1(w)) for softplus, log w for exp."""
    if not math.isfinite(width) or width <= 0:
        raise InputError(f"band width must be a positive finite number, got {width!r}")
    if param == "exp":
        return math.log(width)
    # softplus⁻¹(w) = log(e^w − 1) = w + log(1 − e^{−w}), stable for large and small w
    return width + math.log(-math.expm1(-width))


class BandHead(nn.Module):
    """σ(x) > 0 from backbone features h: Linear → BatchNorm → ReLU → Linear → softplus (or exp).

    Formula: a = W₂ relu(BN(W₁ h)) + b₂, σ = softplus(a) = log(1 + eᵃ) (or σ = eᵃ). ``shape``
    ``diagonal`` gives one width per embedding dimension, (B, out_dim); ``scalar`` one per input,
    (B, 1), broadcast over the dimensions by the band terms.

    Initialised wide: b₂ = positive⁻¹(``init_width``), so an input whose hidden features are zero
    starts at exactly ``init_width`` and the others around it (W₂ keeps PyTorch's default
    initialisation: LARS gives a zero weight no trust ratio, so a zero W₂ would take a raw SGD
    step). The composite method uses init_width = 1.0, the per-dimension standard deviation γ = 1
    its variance term asks of μ: the band starts as wide as the spread μ is pushed to (590x the
    spread of μ at initialisation on digits, 266x on 16-px CIFAR-10; docs/methods.md "The
    uncertainty band"). BatchNorm on the hidden layer makes σ independent of the scale of h.

    Softplus grows linearly and its gradient vanishes only as σ → 0 like σ itself, so a band that
    shrinks does so at a rate the losses set; exp makes log σ the free parameter (σ can shrink
    geometrically, Kendall & Gal 2017 predict log σ² for the same reason: stability of the
    division). Shapes: (B, in_dim) → (B, out_dim) or (B, 1).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        shape: str = "diagonal",
        param: str = "softplus",
        hidden_dim: int = 128,
        init_width: float = 1.0,
    ) -> None:
        super().__init__()
        if shape not in BAND_SHAPES:
            raise InputError(f"BandHead: shape must be one of {', '.join(BAND_SHAPES)}, got {shape!r}")
        if param not in BAND_PARAMETRISATIONS:
            raise InputError(f"BandHead: param must be one of {', '.join(BAND_PARAMETRISATIONS)}, got {param!r}")
        for value, name in ((in_dim, "in_dim"), (out_dim, "out_dim"), (hidden_dim, "hidden_dim")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"BandHead: {name} must be a positive integer, got {value!r}")
        self.in_dim, self.shape, self.param = in_dim, shape, param
        self.out_dim = out_dim if shape == "diagonal" else 1
        self.init_width = float(init_width)
        self.hidden = nn.Linear(in_dim, hidden_dim, bias=False)
        self.norm = nn.BatchNorm1d(hidden_dim)
        self.out = nn.Linear(hidden_dim, self.out_dim)
        nn.init.constant_(self.out.bias, inverse_positive(self.init_width, param))

    def pre_activation(self, features: torch.Tensor) -> torch.Tensor:
        """a(h) = W₂ relu(BN(W₁ h)) + b₂ (log σ under ``exp``)."""
        if features.ndim != 2 or features.shape[1] != self.in_dim:
            raise InputError(f"BandHead: expected features of shape (B, {self.in_dim}), got {tuple(features.shape)}")
        return self.out(F.relu(self.norm(self.hidden(features))))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        a = self.pre_activation(features)
        return torch.exp(a) if self.param == "exp" else F.softplus(a)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, param={self.param}, init_width={self.init_width:g}"
