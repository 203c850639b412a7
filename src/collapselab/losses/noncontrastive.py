"""Non-contrastive objectives: negative cosine (BYOL/SimSiam), Barlow Twins, VICReg, I-JEPA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

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

__all__ = [
    "barlow_twins",
    "latent_prediction",
    "negative_cosine",
    "symmetric_negative_cosine",
    "vicreg",
]

Terms = dict[str, torch.Tensor]


@semantics("local")
def negative_cosine(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """Negative cosine similarity between a prediction and a (stop-gradient) target.

    Formula: D(p, z) = −mean_b ⟨p_b/‖p_b‖, sg(z_b)/‖z_b‖⟩ ∈ [−1, 1]; −1 when every prediction
    points at its target (the value a collapsed SimSiam reaches).

    Source: Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, eq. (1);
    BYOL (Grill et al., NeurIPS 2020, eq. 2) uses 2 − 2⟨·,·⟩, the same up to an affine map.

    Shapes: ``p``, ``z`` (n, D). Returns a scalar. ``stop_gradient=False`` lets gradient flow into
    ``z`` (the ablation that collapses).

    Distributed (``local``): a per-rank mean; DDP's averaging gives the full-batch gradient.
    """
    p = check_tensor(p, "p")
    z = check_tensor(z, "z")
    check_same_shape(p, z, "p", "z")
    target = z.detach() if stop_gradient else z
    return -F.cosine_similarity(p, target, dim=1).mean()


@semantics("local")
def symmetric_negative_cosine(
    p1: torch.Tensor,
    p2: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    stop_gradient: bool = True,
) -> torch.Tensor:
    """Symmetrised negative cosine: ½D(p1, z2) + ½D(p2, z1) (SimSiam eq. 2, BYOL's symmetrised loss).

    Shapes: all (n, D); p = predictor outputs, z = projector (or EMA target) outputs.
    Distributed (``local``), see :func:`negative_cosine`.
    """
    return 0.5 * negative_cosine(p1, z2, stop_gradient) + 0.5 * negative_cosine(
        p2, z1, stop_gradient
    )


def _global_mean(z: torch.Tensor, n_global: int) -> torch.Tensor:
    return distributed.all_reduce(z.sum(dim=0)) / n_global


@semantics("all_reduce")
def barlow_twins(
    z1: torch.Tensor,
    z2: torch.Tensor,
    lambda_offdiag: float = 5e-3,
    eps: float = 1e-5,
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """Barlow Twins redundancy reduction.

    Formula, with ẑ the batch-standardised embedding (BatchNorm without affine: biased
    variance, ε = 1e-5, as the official code)::

        C_ij = (1/N) Σ_b ẑ1_bi ẑ2_bj
        L    = Σ_i (1 − C_ii)²  +  λ Σ_{i≠j} C_ij²            (plain sums, no 1/D)

    Source: Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
    ICML 2021, eq. (1)–(2) and the official code (facebookresearch/barlowtwins). λ = 5e-3 as
    in the paper (the official script's ``--lambd`` default is 0.0051).
    Two identical, exactly whitened views give L = D·(ε/(1+ε))² ≈ 0 (ε from the BatchNorm).

    Shapes: ``z1``, ``z2`` (n, D), global batch N ≥ 2. Returns a scalar, or
    ``(loss, {"on_diagonal", "off_diagonal"})`` (unweighted sums) with ``return_terms=True``.

    Distributed (``all_reduce``): the BatchNorm statistics (as SyncBatchNorm) and C are summed
    over ranks with gradient and divided by the global batch N, so every rank computes the
    full-batch loss.
    """
    check_positive(eps, "eps")
    z1 = check_tensor(z1, "z1")
    z2 = check_tensor(z2, "z2")
    check_same_shape(z1, z2, "z1", "z2")
    n_global = distributed.global_batch_size(z1.shape[0], z1.device)
    if n_global < 2:
        raise InputError(
            f"barlow_twins: batch standardisation needs a batch of at least 2, got {n_global}"
        )

    def standardise(z: torch.Tensor) -> torch.Tensor:
        centred = z - _global_mean(z, n_global)
        variance = _global_mean(centred * centred, n_global)  # biased, as BatchNorm
        return centred / torch.sqrt(variance + eps)

    c = distributed.all_reduce(standardise(z1).T @ standardise(z2)) / n_global
    on_diagonal = (1.0 - torch.diagonal(c)).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    loss = on_diagonal + lambda_offdiag * off_diag
    if return_terms:
        return loss, {"on_diagonal": on_diagonal.detach(), "off_diagonal": off_diag.detach()}
    return loss


@semantics("all_reduce")
def vicreg(
    z1: torch.Tensor,
    z2: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """VICReg: variance-invariance-covariance regularisation.

    Formula (λ, μ, ν = invariance, variance, covariance weights)::

        s(Z, Z′) = (1/(N·D)) Σ_b ‖z_b − z′_b‖²                  (F.mse_loss)
        v(Z)     = (1/D) Σ_j max(0, γ − √(Var(z_{:,j}) + ε))    (unbiased variance)
        c(Z)     = (1/D) Σ_{i≠j} C(Z)_ij²,  C(Z) = (1/(N−1)) Σ_b (z_b − z̄)(z_b − z̄)ᵀ
        L        = λ·s + μ·[v(Z) + v(Z′)]/2 + ν·[c(Z) + c(Z′)]

    Source: Bardes, Ponce & LeCun, "VICReg", ICLR 2022, eq. (1)–(6). Convention: the paper writes
    μ·[v(Z) + v(Z′)], but the official code (facebookresearch/vicreg) averages the two variance
    terms (as does lightly); we follow the code so the published λ = μ = 25, ν = 1, γ = 1,
    ε = 1e-4 transfer. At complete collapse the variance part is μ·(γ − √ε).

    Shapes: ``z1``, ``z2`` (n, D), global batch N ≥ 2. Returns a scalar, or
    ``(loss, {"invariance": s, "variance": [v(Z)+v(Z′)]/2, "covariance": c(Z)+c(Z′)})``
    (unweighted) with ``return_terms=True``.

    Distributed (``all_reduce``): means, variances and covariances are all-reduced with gradient
    (equivalent to the official code's gather); the invariance term is a local mean.
    """
    check_positive(eps, "eps")
    z1 = check_tensor(z1, "z1")
    z2 = check_tensor(z2, "z2")
    check_same_shape(z1, z2, "z1", "z2")
    n_global = distributed.global_batch_size(z1.shape[0], z1.device)
    if n_global < 2:
        raise InputError(
            f"vicreg: the (unbiased) variance and covariance need a batch of at least 2, got {n_global}"
        )
    dim = z1.shape[1]
    invariance = F.mse_loss(z1, z2)

    def variance_and_covariance(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centred = z - _global_mean(z, n_global)
        cov = distributed.all_reduce(centred.T @ centred) / (n_global - 1)
        std = torch.sqrt(torch.diagonal(cov) + eps)
        return F.relu(gamma - std).mean(), off_diagonal(cov).pow(2).sum() / dim

    v1, c1 = variance_and_covariance(z1)
    v2, c2 = variance_and_covariance(z2)
    variance = (v1 + v2) / 2
    covariance = c1 + c2
    loss = (
        invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    )
    if return_terms:
        terms = {
            "invariance": invariance.detach(),
            "variance": variance.detach(),
            "covariance": covariance.detach(),
        }
        return loss, terms
    return loss


@semantics("local")
def latent_prediction(
    predictions: torch.Tensor | Sequence[torch.Tensor],
    targets: torch.Tensor | Sequence[torch.Tensor],
    loss: Literal["l2", "smooth_l1"] = "l2",
    beta: float = 1.0,
) -> torch.Tensor:
    """I-JEPA latent prediction: regress the (stop-gradient) target-encoder features of blocks.

    Formula, over M target blocks B_k with predicted features ŝ and EMA-target features s::

        L = (1 / #entries) Σ_k Σ_{j∈B_k} ℓ(ŝ_j − sg(s_j)),   ℓ = squared error ("l2")
                                                           or smooth-L1 with β ("smooth_l1")

    i.e. the mean over every entry of every block. Source: Assran et al., "Self-Supervised
    Learning from Images with a Joint-Embedding Predictive Architecture", CVPR 2023, Sec. 3 (the loss)
    (written as (1/M) Σ_k Σ_j ‖ŝ_j − s_j‖²; ours differs by the constant factor
    patches-per-block × D when blocks have equal size). The official code uses
    ``F.smooth_l1_loss`` on layer-normalised targets (normalise the targets before calling).

    Shapes: a (M, n, P, D) tensor or a list of M tensors (n, P_k, D) (blocks may differ in
    size), same for ``targets``. Returns a scalar. Targets never receive gradient.

    Distributed (``local``): a per-rank mean.
    """
    if loss not in ("l2", "smooth_l1"):
        raise InputError(f"latent_prediction: loss must be 'l2' or 'smooth_l1', got {loss!r}")
    check_positive(beta, "beta")
    if isinstance(predictions, torch.Tensor) != isinstance(targets, torch.Tensor):
        raise InputError(
            "latent_prediction: pass predictions and targets both as tensors or both as lists"
        )
    if isinstance(predictions, torch.Tensor):
        predictions, targets = [predictions], [targets]  # type: ignore[list-item]
    if len(predictions) != len(targets) or len(predictions) == 0:
        raise InputError(
            f"latent_prediction: need one target per prediction block, got {len(predictions)} "
            f"predictions and {len(targets)} targets"
        )
    total = None
    count = 0
    for k, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
        pred = check_tensor(pred, f"predictions[{k}]", ndim=(2, 3, 4))
        target = check_tensor(target, f"targets[{k}]", ndim=(2, 3, 4))
        check_same_shape(pred, target, f"predictions[{k}]", f"targets[{k}]")
        target = target.detach()
        if loss == "l2":
            block = F.mse_loss(pred, target, reduction="sum")
        else:
            block = F.smooth_l1_loss(pred, target, reduction="sum", beta=beta)
        total = block if total is None else total + block
        count += pred.numel()
    assert total is not None
    return total / count
