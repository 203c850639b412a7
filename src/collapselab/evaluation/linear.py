"""Linear probe: multinomial logistic regression on frozen, standardised features (docs/evaluation.md).

Objective (W ∈ R^{D×C}, b ∈ R^C, standardised features x̃ = (x − μ)/σ with μ, σ from the train split):

    L(W, b) = (1/N) Σ_i −log softmax(x̃_i W + b)_{y_i} + (λ/2) ‖W‖²_F

minimised by full-batch L-BFGS (strong-Wolfe line search) from W = 0, b = 0 in float64, until the
largest gradient entry is below ``tolerance``, the loss stops changing (float64 precision), or
``max_iter`` iterations have run.

Why L-BFGS and not SGD: the problem is convex (strictly, for λ > 0), so there is one answer and
a full-batch quasi-Newton method reaches it without a learning rate, epochs, batch size or
schedule to tune; no sampling means the same inputs give the same weights, bit for bit on one
device. Frozen features fit in memory (50,000 × 512 in float64 is 200 MB), which is the regime of
this library. It is the protocol of Kornblith et al., "Do Better ImageNet Models Transfer
Better?" (CVPR 2019: L-BFGS, ℓ2-regularised multinomial logistic regression, λ chosen on a
validation split), used for SimCLR's linear-transfer results (Chen et al. 2020, appendix), and the
objective of scikit-learn's ``LogisticRegression`` (its C equals 1/(λN)). ImageNet-scale probes
with augmentation (SGD + cosine schedule, as in solo-learn) are out of scope: features here are
frozen and un-augmented.

``l2`` may be a sequence: each λ is fitted on a seeded 80 % of the train split and scored on the
other 20 %; the best (first on ties) is refitted on the whole train split.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from collapselab._validation import ArrayLike, InputError
from collapselab.evaluation._inputs import (
    check_features,
    check_l2,
    check_labels,
    check_seed,
    check_split_pair,
    resolve_device,
)

DEFAULT_L2 = 1e-4
DEFAULT_MAX_ITER = 1000
DEFAULT_TOLERANCE = 1e-6
VALIDATION_FRACTION = 0.2


class ConvergenceWarning(UserWarning):
    """L-BFGS stopped at ``max_iter`` before the gradient tolerance was reached."""


@dataclass
class LinearProbe:
    """A fitted probe: logits = ((x − mean) / std) @ weight + bias.

    ``iterations``: L-BFGS iterations used; ``converged``: False when ``max_iter`` ran out first;
    ``l2``: the λ it was fitted with.
    """

    weight: torch.Tensor  # (D, C)
    bias: torch.Tensor  # (C,)
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    l2: float
    iterations: int
    converged: bool

    @torch.no_grad()
    def logits(self, features: ArrayLike) -> torch.Tensor:
        """(M, C) logits for (M, D) features (on the probe's device and dtype)."""
        x = check_features(features, "features").to(
            device=self.weight.device, dtype=self.weight.dtype
        )
        if x.shape[1] != self.weight.shape[0]:
            raise InputError(
                f"features have {x.shape[1]} dimensions; the probe was fitted on {self.weight.shape[0]}"
            )
        return ((x - self.mean) / self.std) @ self.weight + self.bias

    def predict(self, features: ArrayLike) -> torch.Tensor:
        """(M,) predicted classes (argmax of the logits; ties go to the lower index)."""
        return self.logits(features).argmax(dim=1)


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std (population); constant features get std 1 so they stay 0."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
    return mean, std


def _fit(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int, tolerance: float
) -> LinearProbe:
    mean, std = _standardise(x)
    xs = x.sub(mean).div_(std)  # one (N, D) temporary, not two
    weight = torch.zeros(x.shape[1], n_classes, dtype=x.dtype, device=x.device)
    bias = torch.zeros(n_classes, dtype=x.dtype, device=x.device)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=int(max_iter * 1.25) + 1,
        tolerance_grad=tolerance,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    one_hot = F.one_hot(y, n_classes).to(x.dtype)
    n = x.shape[0]

    def closure() -> torch.Tensor:
        # Loss and gradient in closed form (no autograd): with P = softmax(x̃W + b) and
        # G = (P − onehot(y))/N, ∂L/∂W = x̃ᵀG + λW and ∂L/∂b = Σ_i G_i. x̃ᵀG is computed as
        # (Gᵀx̃)ᵀ: MKL is ~8x slower on the transposed-view product for a few output columns.
        with torch.no_grad():
            logits = torch.addmm(bias, xs, weight)
            log_p = logits.log_softmax(dim=1)
            loss = -(log_p * one_hot).sum() / n + 0.5 * l2 * weight.pow(2).sum()
            residual = (log_p.exp_() - one_hot) / n
            weight.grad = (residual.T @ xs).T.contiguous().add_(weight, alpha=l2)
            bias.grad = residual.sum(dim=0)
        return loss

    optimizer.step(closure)
    closure()  # gradient at the final point, for the convergence check
    gradient = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    # Stopping before max_iter without meeting the gradient tolerance means the loss or the step
    # stopped changing (tolerance_change): no progress is left at this precision.
    converged = gradient <= tolerance or iterations < max_iter
    return LinearProbe(weight.detach(), bias.detach(), mean, std, float(l2), iterations, converged)


def fit_linear_probe(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    l2: float | Sequence[float] = DEFAULT_L2,
    n_classes: int | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
) -> LinearProbe:
    """Fit the ℓ2-regularised multinomial logistic regression of the module docstring.

    Args:
        features: (N, D) frozen features; labels: (N,) integers in 0..C−1.
        l2: λ ≥ 0, or a sequence of candidates chosen on a seeded validation split.
        n_classes: C (default max label + 1); max_iter, tolerance: L-BFGS stopping rule.
        seed: seeds the validation split (only used when ``l2`` is a sequence).
        device, dtype: where and in which precision to fit (default: the features' device, float64).

    Warns:
        ConvergenceWarning: when ``max_iter`` is reached first (e.g. separable data with tiny λ).
    """
    x = check_features(features, "features")
    y = check_labels(labels, x.shape[0], "labels", "features")
    if int(y.min()) < 0:
        raise InputError(
            f"labels must be in 0..C-1, got minimum {int(y.min())}; see linear_probe for any labels"
        )
    n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
    if torch.unique(y).numel() < 2:
        raise InputError(
            f"labels hold a single class ({int(y[0])}); a probe needs at least 2 classes"
        )
    dev = resolve_device(device, x)
    x = x.to(device=dev, dtype=dtype)
    y = y.to(dev)
    checked = check_l2(l2)
    candidates = checked if isinstance(checked, list) else [checked]
    seed = check_seed(seed, kmeans=False)
    if len(candidates) > 1:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(x.shape[0], generator=generator).to(dev)
        n_val = max(1, round(VALIDATION_FRACTION * x.shape[0]))
        val, fit = order[:n_val], order[n_val:]
        scores = []
        for value in candidates:
            probe = _fit(x[fit], y[fit], n_classes, value, max_iter, tolerance)
            scores.append(float((probe.predict(x[val]) == y[val]).double().mean()))
        candidates = [candidates[max(range(len(scores)), key=lambda i: (scores[i], -i))]]
    probe = _fit(x, y, n_classes, candidates[0], max_iter, tolerance)
    if not probe.converged:
        warnings.warn(
            f"linear probe: L-BFGS reached max_iter={max_iter} before the gradient fell below "
            f"{tolerance} (l2={probe.l2}); the data may be separable: raise l2 or max_iter",
            ConvergenceWarning,
            stacklevel=2,
        )
    return probe


def linear_probe(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    *,
    l2: float | Sequence[float] = DEFAULT_L2,
    max_iter: int = DEFAULT_MAX_ITER,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    """Fit on the train split, score on the held-out test split.

    Labels may be any integers or text (class names); a class absent from the train split is
    never predicted (its test samples count as errors). Returns fractions in [0, 1]:
    ``linear_top1`` (test) and ``linear_train_top1`` (train; a large gap means overfitting).
    """
    xtr, ytr, xte, yte, _ = check_split_pair(
        train_features, train_labels, test_features, test_labels
    )
    # Fit on the classes the train split holds: a test-only class has no data, its logit would
    # only drift towards −∞. Predictions are mapped back to the codes shared by both splits.
    train_classes, ytr_fit = torch.unique(ytr, return_inverse=True)
    probe = fit_linear_probe(
        xtr,
        ytr_fit,
        l2=l2,
        n_classes=len(train_classes),
        max_iter=max_iter,
        tolerance=tolerance,
        seed=seed,
        device=device,
        dtype=dtype,
    )
    test_hits = train_classes[probe.predict(xte).cpu()] == yte
    train_hits = train_classes[probe.predict(xtr).cpu()] == ytr
    return {
        "linear_top1": float(test_hits.double().mean()),
        "linear_train_top1": float(train_hits.double().mean()),
    }
