"""Optimisers for SSL pre-training: parameter groups, LARS, and a builder by name.

``parameter_groups`` splits a model into a weight-decayed group and a group of biases and
normalisation parameters (ndim <= 1) that get neither weight decay nor LARS adaptation, as in
SimCLR, BYOL and Barlow Twins. ``build_optimizer`` turns a name ("sgd", "lars", "adamw") and a
module into a ready optimiser over those groups.
"""

from __future__ import annotations

import difflib
import inspect
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
    module: nn.Module,
    weight_decay: float,
    exclude_bias_and_norm: bool = True,
    predictor_prefix: str | None = None,
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``module`` into optimiser parameter groups.

    With ``exclude_bias_and_norm`` every parameter with ``ndim <= 1`` (biases, BatchNorm /
    LayerNorm scales and shifts) goes to group ``"no_decay"`` (``weight_decay=0.0``,
    ``lars_exclude=True``) and the rest to ``"decay"`` (``weight_decay``, ``lars_exclude=False``);
    without it, all go to ``"decay"``. Frozen parameters (``requires_grad=False``) are left out,
    shared parameters appear once, empty groups are dropped. The ``ndim <= 1`` rule is the one of
    SimCLR / BYOL / Barlow Twins (``exclude_bias_and_norm``).

    With ``predictor_prefix`` (e.g. ``"predictor."``), parameters whose name starts with it go to
    groups of their own, ``"predictor_decay"`` / ``"predictor_no_decay"``, marked
    ``"predictor": True``, so a trainer can give the predictor its own learning rate (SimSiam's
    constant predictor rate: Chen & He 2021, Sec. 4.2, Table 1 "lr not decayed"; the official
    ``--fix-pred-lr``).
    """
    _check_hyperparameters(weight_decay=weight_decay)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (pred, dec): [] for pred in (False, True) for dec in (True, False)
    }
    for name, param in module.named_parameters():  # named_parameters yields a shared tensor once
        if not param.requires_grad:
            continue
        pred = predictor_prefix is not None and name.startswith(predictor_prefix)
        buckets[(pred, not (exclude_bias_and_norm and param.ndim <= 1))].append(param)
    groups = []
    for (pred, dec), params in buckets.items():
        group: dict[str, Any] = {
            "name": ("predictor_" if pred else "") + ("decay" if dec else "no_decay"),
            "params": params,
            "weight_decay": float(weight_decay) if dec else 0.0,
            "lars_exclude": not dec,
        }
        if pred:
            group["predictor"] = True
        groups.append(group)
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
    so ``state_dict``/``load_state_dict`` round-trip. Parameters whose ``grad`` is None are skipped
    (no state is created for them).

    The step is vectorised: per parameter group and per (device, dtype) bucket it issues a fixed
    handful of ``torch._foreach_*`` kernels instead of ~10 small kernels per tensor, and it never
    reads a tensor on the host (the trust ratio stays on the device), so on a GPU it neither
    synchronises nor scales its launch count with the number of parameter tensors.
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
        """Perform one update; ``closure`` (optional) re-evaluates the model and returns the loss.

        A sparse gradient anywhere raises InputError before any parameter is touched.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # First pass: check every gradient and bucket (param, grad) pairs per group and per
        # (device, param dtype, grad dtype), the unit a single foreach kernel can handle.
        plan: list[tuple[dict[str, Any], list[tuple[list[torch.Tensor], list[torch.Tensor]]]]] = []
        for group in self.param_groups:
            buckets: dict[tuple[Any, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise InputError("LARS does not support sparse gradients; use dense embeddings")
                params, grads = buckets.setdefault((p.device, p.dtype, grad.dtype), ([], []))
                params.append(p)
                grads.append(grad)
            if buckets:
                plan.append((group, list(buckets.values())))
        for group, bucket_list in plan:
            for params, grads in bucket_list:
                bufs = [self._momentum_buffer(p) for p in params]
                if group["lars_exclude"]:
                    _momentum_update(
                        params, grads, bufs, lr=group["lr"], momentum=group["momentum"]
                    )
                else:
                    _lars_update(
                        params, grads, bufs, lr=group["lr"], momentum=group["momentum"],
                        weight_decay=group["weight_decay"], eta=group["eta"],
                    )
        return loss

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        """``state[p]["momentum_buffer"]``, created as zeros (so the first step gives buf = g)."""
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.zeros_like(p)
        return buf


def _momentum_update(
    params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor],
    *, lr: float, momentum: float,
) -> None:
    """Heavy-ball SGD on one bucket: buf ← μ·buf + g, w ← w − lr·buf (3 foreach kernels)."""
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads)
    torch._foreach_add_(params, bufs, alpha=-lr)


def _flat_trust_scaling(device: torch.device) -> bool:
    """Whether ``_lars_update`` applies the trust ratios through one flat buffer (accelerators).

    On CPU every ``_foreach_*`` op is a loop over tensors anyway, and a fresh flat buffer costs
    page faults each step, so CPU keeps per-tensor buffers.
    """
    return device.type != "cpu"


def _lars_update(
    params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor],
    *, lr: float, momentum: float, weight_decay: float, eta: float,
) -> None:
    """One LARS step on a bucket of same-device, same-dtype tensors, without host reads.

    d = g + wd·w (``p.grad`` is left untouched); per-tensor trust ratios
    t = η‖w‖/‖d‖ if ‖w‖ > 0 and ‖d‖ > 0 else 1, computed as one vector on the device; then
    buf ← μ·buf + t·d and w ← w − lr·buf.

    On an accelerator d lives in one flat buffer whose per-tensor views feed the foreach kernels,
    and t is applied to it by a single multiply with t repeated over each tensor's elements:
    ``_foreach_mul_`` with a list of 0-d tensors would take its one-kernel-per-tensor slow path
    (its fast path needs equal shapes), i.e. as many launches as the old loop.
    """
    flat: torch.Tensor | None = None
    if _flat_trust_scaling(params[0].device):
        flat = torch.cat([g.reshape(-1) for g in grads])
        sizes = [g.numel() for g in grads]
        d = [chunk.view(p.shape) for chunk, p in zip(flat.split(sizes), params, strict=True)]
        if weight_decay != 0:
            torch._foreach_add_(d, params, alpha=weight_decay)
    elif weight_decay != 0:
        d = torch._foreach_add(grads, params, alpha=weight_decay)
    else:
        d = list(grads)  # p.grad itself: scaled out of place below
    w_norm = torch.stack(torch._foreach_norm(params))
    d_norm = torch.stack(torch._foreach_norm(d))
    trust = torch.where(
        (w_norm > 0) & (d_norm > 0), eta * w_norm / d_norm, torch.ones_like(w_norm)
    )
    if flat is not None:
        flat.mul_(torch.cat([t.expand(n) for t, n in zip(trust.unbind(0), sizes, strict=True)]))
    elif weight_decay != 0:
        torch._foreach_mul_(d, trust.unbind(0))
    else:
        d = torch._foreach_mul(d, trust.unbind(0))
    _momentum_update(params, d, bufs, lr=lr, momentum=momentum)


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
    predictor_prefix: str | None = None,
) -> torch.optim.Optimizer:
    """Build ``"sgd"`` (momentum SGD), ``"lars"`` or ``"adamw"`` over ``parameter_groups(module)``.

    ``momentum`` is used by sgd/lars, ``betas`` by adamw, ``eta`` by lars. Biases and norm
    parameters get no weight decay when ``exclude_bias_and_norm`` (and no LARS adaptation).
    ``predictor_prefix`` puts the predictor's parameters in groups of their own (see
    :func:`parameter_groups`). Raises InputError for an unknown name (with the nearest valid one), out-of-range
    hyper-parameters, or a module without trainable parameters.

    SGD and AdamW get ``foreach=True`` (multi-tensor kernels, a few launches per step and no host
    synchronisation) when their constructor takes it, not ``fused=True``: foreach is the
    implementation torch already picks by default for CUDA parameters, so the maths (and the
    numbers) stay those of torch's default path on every device; whereas the flag is saved in the
    optimiser's ``state_dict`` and restored by ``load_state_dict``, so a ``fused=True`` checkpoint
    would fail to resume where fused kernels are missing (CPU on older torch; torch 2.1 has no
    fused SGD at all), and fused AdamW rounds differently from the default path. LARS is
    vectorised itself (see :class:`LARS`).
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        near = difflib.get_close_matches(key, OPTIMIZERS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise InputError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}{hint}")
    _check_hyperparameters(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise InputError(f"betas must be two numbers in [0, 1), got {betas}")
    groups = parameter_groups(module, weight_decay, exclude_bias_and_norm, predictor_prefix)
    if not groups:
        raise InputError(
            f"{type(module).__name__} has no trainable parameters (all have requires_grad=False); "
            "unfreeze some parameters before building an optimizer"
        )
    if key == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
            **_foreach_kwargs(torch.optim.SGD),
        )
    if key == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
    return torch.optim.AdamW(
        groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
        **_foreach_kwargs(torch.optim.AdamW),
    )


def _foreach_kwargs(cls: type[torch.optim.Optimizer]) -> dict[str, Any]:
    """``{"foreach": True}`` if the constructor of ``cls`` takes ``foreach``, else ``{}``."""
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no introspectable signature: keep torch's default
        return {}
    return {"foreach": True} if "foreach" in accepted else {}


def own_predictor_rate(optim: Any) -> bool:
    """Whether ``optim`` (an ``OptimConfig``) gives the predictor a rate of its own."""
    return float(optim.predictor_lr_ratio) != 1.0 or optim.predictor_lr_schedule != "cosine"


def predictor_rate(optim: Any, scheduled: float, base: float) -> float:
    """The predictor's rate at a step: ``ratio × scheduled`` (``cosine``) or ``ratio × base``
    (``constant``: no warm-up and no decay, SimSiam's ``--fix-pred-lr``, Chen & He 2021)."""
    ratio = float(optim.predictor_lr_ratio)
    return ratio * (base if optim.predictor_lr_schedule == "constant" else scheduled)
