"""The trainer's fast path on a GPU: channels-last memory layout and ``torch.compile``.

* ``train.channels_last``: convolution weights and the views in NHWC layout
  (``torch.channels_last``), which cuDNN runs on tensor cores without transposes and oneDNN
  runs faster on the CPU; ``auto`` turns it on for CUDA and the CPU when the backbone has 2-D
  convolutions. Values are unchanged up to the
  convolution algorithm's rounding.
* ``train.compile``: ``torch.compile`` of the backbones (the online one and an EMA target's copy),
  which hold nearly all of the FLOPs; heads and losses stay eager. ``nn.Module.compile`` keeps the
  parameter names, so checkpoints are the same with and without it. The probe and the online kNN
  run the eager modules (:meth:`CompiledNetworks.eager`), so evaluation mode and other batch
  sizes trigger no recompilation, and the trainer hands back eager modules at the end.
  ``auto`` compiles on CUDA when the run has at least :data:`COMPILE_AUTO_MIN_STEPS` steps.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from collapselab._validation import InputError

# A run this long on CUDA is compiled by ``train.compile=auto``: compiling a ResNet-18 takes
# about a minute, the step gets a few percent faster (docs/performance.md).
COMPILE_AUTO_MIN_STEPS = 5000
# The same for a run given as a time budget (its steps are planned after compiling).
COMPILE_AUTO_MIN_BUDGET_S = 600.0


def has_conv2d(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def use_channels_last(mode: str, device: torch.device, backbone: nn.Module) -> bool:
    """``train.channels_last``: on, off, or auto (a convolutional backbone on CUDA or the CPU,
    where oneDNN's NHWC convolutions and batch norm took 1.2-1.7x less time per training step
    than NCHW in ``benchmarks/channels_last_cpu.py``)."""
    if mode == "auto":
        return device.type in ("cuda", "cpu") and has_conv2d(backbone)
    return mode == "on"


def to_channels_last(views: list[torch.Tensor]) -> list[torch.Tensor]:
    """4-D views in NHWC memory layout (same shape and values)."""
    return [v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for v in views]


def compile_targets(method: nn.Module) -> list[nn.Module]:
    """The networks worth compiling: ``method.backbone`` and any backbone copy an EMA target holds
    (the first module of its ``net`` when that is a ``Sequential(backbone, projector)``)."""
    from collapselab.methods.base import EMATarget

    targets = [method.backbone]
    for module in method.modules():
        if isinstance(module, EMATarget) and isinstance(module.net, nn.Sequential) and len(module.net):
            targets.append(module.net[0])
    return targets


def compile_decision(mode: str, device: torch.device, total_steps: int | None,
                     time_budget_s: float | None = None) -> tuple[bool, str]:
    """(compile?, why) for ``train.compile``; ``on`` where compiling is impossible is an error.
    ``total_steps=None``: not known yet (a time budget still to be planned): ``auto`` then
    compiles for budgets of at least :data:`COMPILE_AUTO_MIN_BUDGET_S`."""
    if mode == "off":
        return False, "train.compile=off"
    if not hasattr(nn.Module, "compile"):
        if mode == "on":
            raise InputError(f"train.compile=on needs torch >= 2.2 (nn.Module.compile); this is torch "
                             f"{torch.__version__}; set train.compile=off")
        return False, f"torch {torch.__version__} has no nn.Module.compile"
    if mode == "on":
        return True, "train.compile=on"
    if device.type != "cuda":
        return False, "auto: compiles on CUDA only"
    if total_steps is None:
        budget = time_budget_s or 0.0
        if budget < COMPILE_AUTO_MIN_BUDGET_S:
            return False, f"auto: a {budget:.0f} s budget < {COMPILE_AUTO_MIN_BUDGET_S:.0f} s, compiling would not pay off"
        return True, f"auto: CUDA and a {budget:.0f} s budget"
    if total_steps < COMPILE_AUTO_MIN_STEPS:
        return False, f"auto: {total_steps} steps < {COMPILE_AUTO_MIN_STEPS}, compiling would not pay off"
    return True, f"auto: CUDA and {total_steps} steps"


class CompiledNetworks:
    """``nn.Module.compile`` on a list of modules, with a switch back to eager."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        for module in modules:
            module.compile()
        self.impls = [m._compiled_call_impl for m in modules]
        self.active = True

    def disable(self) -> None:
        """Eager from now on (after a failed compilation, and at the end of training)."""
        for module in self.modules:
            module._compiled_call_impl = None
        self.active = False

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Run the eager modules inside the block (evaluation passes)."""
        if not self.active:
            yield
            return
        for module in self.modules:
            module._compiled_call_impl = None
        try:
            yield
        finally:
            for module, impl in zip(self.modules, self.impls, strict=True):
                module._compiled_call_impl = impl


def compile_failed_warning(err: BaseException) -> None:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    warnings.warn(f"train.compile=auto: torch.compile failed ({type(err).__name__}: {first[:200]}); "
                  "training continues eager (set train.compile=off to skip the attempt)",
                  UserWarning, stacklevel=2)


__all__ = [
    "COMPILE_AUTO_MIN_STEPS", "CompiledNetworks", "compile_decision", "compile_failed_warning",
    "compile_targets", "has_conv2d", "to_channels_last", "use_channels_last",
]
