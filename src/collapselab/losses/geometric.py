"""Geometric loss terms one at a time: alignment (MSE or cosine), variance hinge, covariance
penalty, uniformity. The composite objective (:mod:`collapselab.methods.composite`) weights and
sums them, computing only the terms whose weight is non-zero.

The same formulas as :func:`collapselab.losses.vicreg` and
:func:`collapselab.losses.alignment_uniformity`, split so that each term can be switched off
without being computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from collapselab import distributed
from collapselab._validation import InputError
from collapselab.losses._common import (
    check_positive,
    check_same_shape,
    check_tensor,
    off_diagonal,
    semantics,
)
from collapselab.losses.contrastive import _log_mean_gaussian_kernel
from collapselab.losses.noncontrastive import _global_mean

__all__ = ["cosine_alignment", "covariance_penalty", "mse_alignment", "uniformity", "variance_hinge"]


@semantics("local")
def mse_alignment(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two embeddings (VICReg's invariance term s).

    Formula: s(P, Z) = (1/(N·D)) Σ_b ‖p_b − z_b‖² (``F.mse_loss``). Source: Bardes et al.,
    "VICReg", ICLR 2022, eq. (5). Shapes: ``p``, ``z`` (n, D). Returns a scalar. Gradient flows into
    both arguments; detach ``z`` for a stop-gradient target.

    Distributed (``local``): a per-rank mean.
    """
    p = check_tensor(p, "p")
    z = check_tensor(z, "z")
    check_same_shape(p, z, "p", "z")
    return F.mse_loss(p, z)


@semantics("local")
def cosine_alignment(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Squared distance of L2-normalised embeddings (BYOL's loss; Wang & Isola's alignment, α = 2).

    Formula: a(P, Z) = mean_b ‖p_b/‖p_b‖ − z_b/‖z_b‖‖² = mean_b (2 − 2 cos(p_b, z_b)) ∈ [0, 4].
    Source: Grill et al., "BYOL", NeurIPS 2020, eq. (2); Wang & Isola, ICML 2020, Sec. 4.1.
    Shapes: ``p``, ``z`` (n, D). Returns a scalar. Gradient flows into both arguments.

    Distributed (``local``): a per-rank mean.
    """
    p = check_tensor(p, "p")
    z = check_tensor(z, "z")
    check_same_shape(p, z, "p", "z")
    return 2.0 - 2.0 * F.cosine_similarity(p, z, dim=1).mean()


def _global_batch(z: torch.Tensor, name: str) -> int:
    n_global = distributed.global_batch_size(z.shape[0], z.device)
    if n_global < 2:
        raise InputError(f"{name}: needs a batch of at least 2, got {n_global}")
    return n_global


@semantics("all_reduce")
def variance_hinge(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance term: a hinge on the standard deviation of every dimension.

    Formula: v(Z) = (1/D) Σ_j max(0, γ − √(Var(z_{:,j}) + ε)), Var unbiased (1/(N−1)).
    Source: Bardes et al., "VICReg", ICLR 2022, eq. (1). γ = 1, ε = 1e-4. Equals γ − √ε at complete
    collapse, 0 when every dimension has std ≥ γ. Shapes: ``z`` (n, D), global batch N ≥ 2.

    Distributed (``all_reduce``): the mean and the variance are summed over ranks with gradient.
    """
    check_positive(eps, "eps")
    check_positive(gamma, "gamma")
    z = check_tensor(z, "z")
    n_global = _global_batch(z, "variance_hinge")
    centred = z - _global_mean(z, n_global)
    variance = distributed.all_reduce((centred * centred).sum(dim=0)) / (n_global - 1)
    return F.relu(gamma - torch.sqrt(variance + eps)).mean()


@semantics("all_reduce")
def covariance_penalty(z: torch.Tensor) -> torch.Tensor:
    """VICReg's covariance term: the squared off-diagonal covariances, divided by D.

    Formula: c(Z) = (1/D) Σ_{i≠j} C(Z)_ij², C(Z) = (1/(N−1)) Σ_b (z_b − z̄)(z_b − z̄)ᵀ.
    Source: Bardes et al., "VICReg", ICLR 2022, eq. (3)–(4). 0 for decorrelated dimensions and
    also at complete collapse (it does not prevent collapse on its own). Shapes: ``z`` (n, D),
    global batch N ≥ 2.

    Distributed (``all_reduce``): the mean and C are summed over ranks with gradient.
    """
    z = check_tensor(z, "z")
    n_global = _global_batch(z, "covariance_penalty")
    centred = z - _global_mean(z, n_global)
    cov = distributed.all_reduce(centred.T @ centred) / (n_global - 1)
    return off_diagonal(cov).pow(2).sum() / z.shape[1]


@semantics("gather")
def uniformity(z: torch.Tensor, t: float = 2.0, normalize: bool = True) -> torch.Tensor:
    """Wang & Isola's uniformity (repulsion) loss on the hypersphere.

    Formula: u(Z) = log mean_{i<j} exp(−t‖ẑ_i − ẑ_j‖²), ẑ = z/‖z‖ (``normalize=True``), over the
    N(N−1)/2 pairs. Source: Wang & Isola, "Understanding Contrastive Representation Learning
    through Alignment and Uniformity on the Hypersphere", ICML 2020, Sec. 4.1 (L_uniform), t = 2.
    0 at complete collapse, more negative the more spread the embedding (≥ −2t·N/(N−1)).
    Shapes: ``z`` (n, D), global batch N ≥ 2.

    Distributed (``gather``): computed over the gathered global batch (all pairs across ranks).
    """
    check_positive(t, "t")
    z = check_tensor(z, "z")
    if normalize:
        z = F.normalize(z, dim=1)
    everyone = distributed.gather(z)
    if everyone.shape[0] < 2:
        raise InputError("uniformity: needs a batch of at least 2")
    return _log_mean_gaussian_kernel(everyone, t)
