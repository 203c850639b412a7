"""Terms of the uncertainty band: a Gaussian likelihood that makes the band cover the views'
disagreement, and a prior or floor that keeps it from vanishing or exploding.

An embedding with a band represents input x as N(μ(x), diag σ(x)²) (Oh et al., "Modeling
Uncertainty with Hedged Instance Embeddings", ICLR 2019; Shi & Jain, "Probabilistic Face
Embeddings", ICCV 2019). ``σ`` is (n, D) (one width per dimension) or (n, 1) (one per input,
broadcast over the D dimensions); every term is averaged over the batch and over the
dimensions of its widest argument. The composite method (:mod:`collapselab.methods.composite`)
weights and sums them with the geometric terms on μ.

Variational SSL (docs/methods.md "The uncertainty band" has the comparison in full):
VI-SimSiam (Nakamura, Okada & Taniguchi, ICCV 2023) also scores the other view under this view's
distribution, with a KL term on the posterior. It works on the unit sphere with one concentration
κ(x) and a SimSiam predictor plus stop-gradient. We use a Gaussian in R^D, a width per dimension
or per input, and a KL to a band of fixed width σ_ref centred on μ. MCInfoNCE (Kirchhof, Kasneci
& Oh, ICML 2023) uses von Mises–Fisher posteriors and an InfoNCE on Monte-Carlo samples, and it
proves that the true aleatoric posterior is recovered. We use no negatives and no sampling (a
closed-form likelihood of a point target), so that guarantee does not carry over.

Balance of the terms (our derivation; docs/methods.md "The uncertainty band"). Per entry, with
residual r = t − μ and s = log σ, the likelihood's gradient is ∂/∂s ½[r²/σ² + log σ²] = 1 − r²/σ²
(so σ → |r|: the band fits the disagreement and shrinks to 0 when the views agree), while the
KL prior gives ∂/∂s = σ²/σ_ref² − 1 and the log floor −1 below the floor. With weights w_nll and
w_prior, at perfect agreement (r = 0) the band settles at σ² = σ_ref²(1 − w_nll/w_prior) under
the KL prior and at the floor under the log floor, both only when w_prior > w_nll; with
w_prior ≤ w_nll nothing stops σ → 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from collapselab._validation import InputError, value_checks_enabled
from collapselab.losses._common import check_positive, check_same_shape, check_tensor, semantics

__all__ = ["band_floor", "band_kl_prior", "band_nll"]


def _check_band(sigma: torch.Tensor, n: int | None, dim: int | None, name: str = "sigma") -> torch.Tensor:
    sigma = check_tensor(sigma, name)
    if n is not None and sigma.shape[0] != n:
        raise InputError(f"{name}: expected {n} rows, got {sigma.shape[0]}")
    if dim is not None and sigma.shape[1] not in (1, dim):
        raise InputError(f"{name}: expected 1 or {dim} columns (one width per input or per dimension), "
                         f"got {sigma.shape[1]}")
    return sigma


@semantics("local")
def band_nll(mean: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Gaussian negative log-likelihood of the target under the band around the mean.

    Formula: ℓ(μ, t, σ) = (1/(n·D)) Σ_b Σ_d ½[(t_bd − μ_bd)²/v_bd + log v_bd], v = max(σ², ε),
    the constant ½ log 2π dropped (= ``F.gaussian_nll_loss(μ, t, σ², eps=ε)``, reduction mean;
    ε = 1e-6 as there: a band under 1e-3 is scored as 1e-3, so the loss stays finite while the
    band itself can still shrink -- the "silent" collapse the ``band`` mode watches). ``mean`` is
    the online embedding or its prediction (p = q(z)), ``target`` the other view's embedding
    (detach it, or take it from an EMA network, for a stop-gradient target), ``sigma`` the band
    of ``mean``'s view. Minimised over σ at σ² = (t − μ)²: the band must cover the disagreement
    between the views, and only that.

    Source: the heteroscedastic regression loss of Nix & Weigend, "Estimating the mean and
    variance of the target probability distribution", ICNN 1994, and Kendall & Gal, "What
    Uncertainties Do We Need in Bayesian Deep Learning for Computer Vision?", NeurIPS 2017,
    eq. (5) (which predicts log σ²; the head in :mod:`collapselab.models.band` offers softplus or
    exp). Differs from Hedged Instance Embeddings (soft contrastive likelihood of sampled pairs)
    and Probabilistic Face Embeddings (mutual likelihood score of two Gaussians, σ₁² + σ₂²): one
    band, the other view's mean as a point target. The μ-gradient (μ − t)/σ² grows as the band
    shrinks; Seitzer et al., ICLR 2022 ("β-NLL") describe that pitfall.
    Shapes: ``mean``, ``target`` (n, D); ``sigma`` (n, D) or (n, 1), > 0. Returns a scalar.

    Distributed (``local``): a per-rank mean.
    """
    mean = check_tensor(mean, "mean")
    target = check_tensor(target, "target")
    check_same_shape(mean, target, "mean", "target")
    sigma = _check_band(sigma, mean.shape[0], mean.shape[1])
    check_positive(eps, "eps")
    variance = sigma.square().clamp_min(eps)
    per_entry = 0.5 * ((target - mean).square() / variance + torch.log(variance))
    return per_entry.mean()


@semantics("local")
def band_kl_prior(sigma: torch.Tensor, reference: torch.Tensor | float) -> torch.Tensor:
    """KL divergence of the band from a reference band of the same centre.

    Formula: (1/(n·k)) Σ_b Σ_d KL(N(μ, σ_bd²) ‖ N(μ, σ_ref²)) = mean[log(σ_ref/σ) + σ²/(2σ_ref²) − ½]
    (k = σ's columns). 0 at σ = σ_ref, → ∞ as σ → 0 (like −log σ) and as σ → ∞ (like σ²): the
    band can neither vanish nor explode.

    Source: the Gaussian KL of the variational information bottleneck that Hedged Instance
    Embeddings use (Alemi et al., "Deep Variational Information Bottleneck", ICLR 2017; Oh et al., ICLR 2019). Differs: their prior
    is N(0, I), whose KL adds ½‖μ‖² and pulls every mean to the origin -- a force towards complete
    collapse in self-supervised learning; this prior shares μ's centre, so it acts on the band only.
    Shapes: ``sigma`` (n, k); ``reference`` a positive number or a tensor that broadcasts (0-d,
    (n, 1), (n, k)). Returns a scalar.

    Distributed (``local``): a per-rank mean.
    """
    sigma = _check_band(sigma, None, None)
    reference = torch.as_tensor(reference, dtype=sigma.dtype, device=sigma.device)
    if value_checks_enabled() and not bool(torch.all(reference > 0)):
        raise InputError("band_kl_prior: reference must be positive")
    ratio = sigma / reference
    return (-torch.log(ratio) + 0.5 * ratio.square() - 0.5).mean()


@semantics("local")
def band_floor(sigma: torch.Tensor, floor: torch.Tensor | float) -> torch.Tensor:
    """A hinge that keeps the band above a floor, on the log scale.

    Formula: (1/(n·k)) Σ_b Σ_d max(0, log(σ_floor / σ_bd)). 0 above the floor; below it the
    gradient in log σ is −1, the same order as the likelihood's 1 − r²/σ², so with weight above
    the likelihood's the band stays at the floor (a hinge linear in σ has a bounded gradient and
    loses against log σ² as σ → 0). No upper bound: it stops vanishing, not exploding.

    Source: the hinge of VICReg's variance term (Bardes et al., ICLR 2022, eq. 1: max(0, γ − std)),
    applied to log σ instead of a standard deviation (our choice, for the reason above).
    Shapes: ``sigma`` (n, k); ``floor`` a positive number or a broadcastable tensor. Returns a scalar.

    Distributed (``local``): a per-rank mean.
    """
    sigma = _check_band(sigma, None, None)
    floor = torch.as_tensor(floor, dtype=sigma.dtype, device=sigma.device)
    if value_checks_enabled() and not bool(torch.all(floor > 0)):
        raise InputError("band_floor: floor must be positive")
    return F.relu(torch.log(floor) - torch.log(sigma)).mean()
