"""Optimisers for SSL pre-training: parameter groups, LARS, and a builder by name.

``parameter_groups`` splits a model into a weight-decayed group and a group of biases and
normalisation parameters (ndim <= 1) that get neither weight decay nor LARS adaptation, as in
SimCLR, BYOL and Barlow Twins. ``build_optimizer`` turns a name ("sgd", "lars", "adamw") and a
module into a ready optimiser over those groups.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from collapselab._validation import InputError

OPTIMIZERS = ("sgd", "lars", "adamw")

# Trust coefficient η of LARS. 0.001 is the default of every SSL reference implementation:
# SimCLR's ``lars_optimizer.py`` (``EETA_DEFAULT = 0.001``), Barlow Twins' ``main.py`` ``LARS``
# (``eta=0.001``) and BYOL (Grill et al. 2020, App. C: "trust coefficient of 10^-3"); the LARS
# paper (You, Gitman & Ginsburg 2017, Alg. 1) leaves η as a hyper-parameter (< 1).
DEFAULT_ETA = 0.001


def _check_hyperparameters(
    lr: float | None = None,
    weight_decay: float | None = None,
    momentum: float | None = None,
    eta: float | None = None,
) -> None:
    """Raise InputError naming the first out-of-range hyper-parameter."""
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a finite number > 0, got {lr}")
    if weight_decay is not None and not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise InputError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise InputError(f"momentum must lie in [0, 1), got {momentum}")
    if eta is not None and not (math.isfinite(eta) and eta > 0):
        raise InputError(f"eta (LARS trust coefficient) must be a finite number > 0, got {eta}")


def parameter_groups(
    module: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``module`` into optimiser parameter groups.

    With ``exclude_bias_and_norm`` every parameter with ``ndim <= 1`` (biases, BatchNorm /
    LayerNorm scales and shifts) goes to group ``"no_decay"`` (``weight_decay=0.0``,
    ``lars_exclude=True``) and the rest to ``"decay"`` (``weight_decay``, ``lars_exclude=False``);
    without it, all go to ``"decay"``. Frozen parameters (``requires_grad=False``) are left out,
    shared parameters appear once, empty groups are dropped. The ``ndim <= 1`` rule is the one of
    SimCLR / BYOL / Barlow Twins (``exclude_bias_and_norm``).
    """
    _check_hyperparameters(weight_decay=weight_decay)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, param in module.named_parameters():  # named_parameters yields a shared tensor once
        if not param.requires_grad:
            continue
        (no_decay if exclude_bias_and_norm and param.ndim <= 1 else decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": float(weight_decay), "lars_exclude": False},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling with heavy-ball momentum (You, Gitman & Ginsburg 2017,
    "Large Batch Training of Convolutional Networks", Alg. 1), in the form used by the SSL
    reference codes (SimCLR ``lars_optimizer.py``, BYOL, Barlow Twins ``main.py``).

    For each parameter ``w`` with gradient ``g`` in a group that is not ``lars_exclude``::

        g ← g + wd·w
        g ← g · η‖w‖/‖g‖          (only when ‖w‖ > 0 and ‖g‖ > 0; the trust ratio)
        buf ← μ·buf + g
        w ← w − lr·buf

    Groups with ``lars_exclude=True`` (biases and norm parameters, see ``parameter_groups``) skip
    both the weight decay and the trust ratio: plain SGD with momentum. Norms are taken over the
    whole tensor (one "layer" = one parameter tensor). Default η = 0.001 as in SimCLR, BYOL and
    Barlow Twins (see ``DEFAULT_ETA``). The momentum buffer is in ``state[p]["momentum_buffer"]``,
    so ``state_dict``/``load_state_dict`` round-trip.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = DEFAULT_ETA,
    ) -> None:
        _check_hyperparameters(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta)
        defaults = {
            "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one update; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            exclude = bool(group["lars_exclude"])
            wd, eta, mu, lr = group["weight_decay"], group["eta"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise InputError("LARS does not support sparse gradients; use dense embeddings")
                g = p.grad
                if not exclude:
                    if wd != 0:
                        g = g.add(p, alpha=wd)
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    # torch.where keeps this on the device (no host sync per parameter).
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    g = g.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(mu).add_(g)
                p.add_(buf, alpha=-lr)
        return loss


def build_optimizer(
    name: str,
    module: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eta: float = DEFAULT_ETA,
    exclude_bias_and_norm: bool = True,
) -> torch.optim.Optimizer:
    """Build ``"sgd"`` (momentum SGD), ``"lars"`` or ``"adamw"`` over ``parameter_groups(module)``.

    ``momentum`` is used by sgd/lars, ``betas`` by adamw, ``eta`` by lars. Biases and norm
    parameters get no weight decay when ``exclude_bias_and_norm`` (and no LARS adaptation).
    Raises InputError for an unknown name (with the nearest valid one), out-of-range
    hyper-parameters, or a module without trainable parameters.
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        near = difflib.get_close_matches(key, OPTIMIZERS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise InputError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}{hint}")
    _check_hyperparameters(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise InputError(f"betas must be two numbers in [0, 1), got {betas}")
    groups = parameter_groups(module, weight_decay, exclude_bias_and_norm)
    if not groups:
        raise InputError(
            f"{type(module).__name__} has no trainable parameters (all have requires_grad=False); "
            "unfreeze some parameters before building an optimizer"
        )
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if key == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
