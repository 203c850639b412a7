"""The pieces every method is made of: ``MethodConfig``, ``MethodOutput``, ``SSLMethod``, the
two-branch ``SiameseMethod`` (predictor / stop-gradient / EMA switches), ``EMATarget`` and the
method registry.

A method owns the maths (its heads and its loss); the trainer owns the loop. ``forward(views)``
returns a :class:`MethodOutput`; ``embed(x)`` returns the named tensors the collapse monitor and
the probes read (``repr`` = backbone features, ``emb`` = projector output).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from collapselab._validation import InputError
from collapselab.engine.schedules import ema_momentum
from collapselab.models import LinearPredictor, MLPHead, mlp_head_preset

PREDICTORS = ("mlp", "linear", "none")
HEAD_SIZES = ("paper", "small")


@dataclass
class MethodConfig:
    """Settings shared by every method (the ``method.`` section of a run config).

    ``projector``: head widths, ``"paper"`` (the published ones) or ``"small"`` (512/128, for
    tiny images and CPUs); ``projector_hidden_dim`` / ``projector_out_dim`` override them.
    ``projector_bn``: BatchNorm in the projector (an anti-collapse switch: BN acts as an
    implicit restoring force near collapse; docs/theory.md, ``batchnorm-jacobian-inverse-spread``).
    """

    name: str = "byol"
    projector: str = "small"
    projector_hidden_dim: int | None = None
    projector_out_dim: int | None = None
    projector_bn: bool = True

    def validate(self) -> None:
        """Raise :class:`InputError` for impossible values (called before any training)."""
        if self.projector not in HEAD_SIZES:
            raise InputError(f"method.projector must be one of {HEAD_SIZES}, got {self.projector!r}")
        for key in ("projector_hidden_dim", "projector_out_dim"):
            value = getattr(self, key)
            if value is not None and int(value) < 1:
                raise InputError(f"method.{key} must be a positive integer or null, got {value}")


@dataclass
class SiameseConfig(MethodConfig):
    """Two-branch methods with the asymmetry switches.

    ``predictor``: ``mlp`` | ``linear`` (a trainable d×d map, identity init) | ``none``.
    ``stop_gradient``: no gradient through the target branch (only meaningful with ``ema=off``:
    an EMA target never receives gradient). ``ema``: base momentum τ of the target network
    (``off`` = the target is the online network itself); ``ema_final``: momentum reached at the
    end by BYOL's cosine schedule, or null to keep τ constant (MoCo).
    """

    predictor: str = "mlp"
    predictor_hidden_dim: int | None = None
    stop_gradient: bool = True
    ema: Any = 0.99
    ema_final: float | None = 1.0

    def validate(self) -> None:
        super().validate()
        if self.predictor not in PREDICTORS:
            near = difflib.get_close_matches(str(self.predictor), PREDICTORS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise InputError(f"method.predictor must be one of {', '.join(PREDICTORS)}, got {self.predictor!r}{hint}")
        momentum = ema_base(self.ema)
        if momentum is not None and not self.stop_gradient:
            raise InputError(
                "method.stop_gradient=false needs method.ema=off: an EMA target network never "
                "receives gradient, so the switch would do nothing"
            )
        if self.ema_final is not None and not 0.0 <= float(self.ema_final) <= 1.0:
            raise InputError(f"method.ema_final must be in [0, 1] or null, got {self.ema_final}")


def ema_base(value: Any) -> float | None:
    """The EMA momentum a config value means: a float in [0, 1), or None for ``off``/``false``/null."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("off", "none", "false")):
        return None
    try:
        momentum = float(value)
    except (TypeError, ValueError):
        raise InputError(f"method.ema must be a momentum in [0, 1) or 'off', got {value!r}") from None
    if not 0.0 <= momentum < 1.0:
        raise InputError(f"method.ema must be a momentum in [0, 1) or 'off', got {value!r}")
    return momentum


@dataclass
class MethodOutput:
    """What a method's forward returns.

    ``loss``: the scalar to minimise. ``tensors``: named tensors of the first view (``repr``,
    ``emb``, optionally ``pred``, ``codes``), detached. ``scalars``: unweighted loss terms and other
    numbers to log (floats or 0-d tensors).
    """

    loss: torch.Tensor
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    scalars: dict[str, float | torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tensors = {name: t.detach() for name, t in self.tensors.items()}


@dataclass(frozen=True)
class StepSchedule:
    """Where training is: ``step`` (0-based, the step about to run), ``total_steps`` and
    ``steps_per_epoch`` (set by :meth:`SSLMethod.start_step`)."""

    step: int = 0
    total_steps: int = 1
    steps_per_epoch: int = 1

    @property
    def epoch(self) -> float:
        """Fractional epoch: step / steps_per_epoch."""
        return self.step / self.steps_per_epoch


class _EMAPlan:
    """What :meth:`EMATarget.update` caches: the online tensors it was built for (checked by
    identity) and the (target, online) lists bucketed by device and dtype, one foreach call each."""

    __slots__ = ("buffer_buckets", "online_buffers", "online_params", "param_buckets")

    def __init__(
        self,
        target: nn.Module,
        online_params: list[torch.Tensor],
        online_buffers: list[torch.Tensor],
    ) -> None:
        self.online_params = online_params
        self.online_buffers = online_buffers
        self.param_buckets = _bucket_pairs(list(target.parameters()), online_params, "parameters")
        self.buffer_buckets = _bucket_pairs(list(target.buffers()), online_buffers, "buffers")

    def matches(self, params: list[torch.Tensor], buffers: list[torch.Tensor]) -> bool:
        """Whether ``params``/``buffers`` are the very tensors the plan was built for."""
        return _same_tensors(self.online_params, params) and _same_tensors(
            self.online_buffers, buffers
        )


def _same_tensors(cached: list[torch.Tensor], current: list[torch.Tensor]) -> bool:
    return len(cached) == len(current) and all(a is b for a, b in zip(cached, current, strict=True))


def _bucket_pairs(
    target: list[torch.Tensor], online: list[torch.Tensor], kind: str
) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Pair target and online tensors in order, grouped by (device, dtype) of both sides (a foreach
    kernel only takes its fast path on a list of one device and one dtype)."""
    if len(target) != len(online):
        raise ValueError(
            f"EMATarget.update: the online network has {len(online)} {kind}, the target "
            f"{len(target)}; pass the module the target was copied from"
        )
    buckets: dict[tuple[Any, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for t, o in zip(target, online, strict=True):
        if t.shape != o.shape:
            raise ValueError(f"EMATarget.update: {kind} shapes differ, target {tuple(t.shape)} "
                             f"vs online {tuple(o.shape)}")
        pair = buckets.setdefault((t.device, t.dtype, o.device, o.dtype), ([], []))
        pair[0].append(t)
        pair[1].append(o)
    return list(buckets.values())


class EMATarget(nn.Module):
    """A target network that follows an online network by exponential moving average.

    ξ ← τ·ξ + (1 − τ)·θ after every optimiser step (Grill et al. 2020, BYOL eq. 1; He et al. 2020,
    MoCo eq. 2). τ follows BYOL's schedule τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2 from
    ``base_momentum`` to ``final_momentum`` (None: constant, as MoCo). Buffers (BatchNorm running
    statistics) are copied, not averaged. The target never receives gradient.

    :meth:`update` is one ``torch._foreach_lerp_`` and one ``torch._foreach_copy_`` per
    (device, dtype) bucket, with τ a Python float: no host synchronisation. The paired tensor
    lists are cached (a plain attribute, so not in ``state_dict``) and rebuilt when the online
    module's parameters or buffers are not the very tensors cached (e.g. a new module, or buffers
    replaced by ``online.to(...)``), when the target is converted (``.to``/``.double``/...,
    which replace buffers) or loads a state dict (``assign=True`` replaces tensors); copies and
    pickles drop it.
    """

    def __init__(self, online: nn.Module, base_momentum: float, final_momentum: float | None = 1.0) -> None:
        super().__init__()
        self.net = copy.deepcopy(online)
        self.net.requires_grad_(False)
        self.base_momentum = float(base_momentum)
        self.final_momentum = final_momentum
        self._plan: _EMAPlan | None = None

    def momentum(self, step: int, total_steps: int) -> float:
        if self.final_momentum is None:
            return self.base_momentum
        return ema_momentum(step, max(total_steps, 1), self.base_momentum, float(self.final_momentum))

    @torch.no_grad()
    def update(self, online: nn.Module, step: int, total_steps: int) -> float:
        """Move the target towards ``online`` (ξ ← τ·ξ + (1 − τ)·θ, buffers copied); returns τ."""
        tau = self.momentum(step, total_steps)
        online_params = list(online.parameters())
        online_buffers = list(online.buffers())
        plan = self.__dict__.get("_plan")  # absent on an EMATarget unpickled from an old file
        if plan is None or not plan.matches(online_params, online_buffers):
            plan = self._plan = _EMAPlan(self.net, online_params, online_buffers)
        for target_params, source_params in plan.param_buckets:
            torch._foreach_lerp_(target_params, source_params, 1.0 - tau)
        foreach_copy = getattr(torch, "_foreach_copy_", None)
        for target_buffers, source_buffers in plan.buffer_buckets:
            if foreach_copy is not None:
                foreach_copy(target_buffers, source_buffers)
            else:  # torch without _foreach_copy_
                for target_buffer, source in zip(target_buffers, source_buffers, strict=True):
                    target_buffer.copy_(source)
        return tau

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> EMATarget:
        # .to()/.double()/.cuda() replace buffers (and parameters under some torch.__future__
        # flags): forget the cached lists so the next update pairs the live tensors.
        self._plan = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._plan = None  # load_state_dict(assign=True) replaces tensors
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        parent = getattr(super(), "__getstate__", None)  # nn.Module's, or object's (3.11+)
        state = dict(parent()) if parent is not None else self.__dict__.copy()
        state["_plan"] = None  # copies/pickles must not share or carry the cached tensor lists
        return state


class SSLMethod(nn.Module):
    """Base of every method: a backbone, a projector, a loss.

    Subclasses set the class attributes and implement :meth:`forward`. ``switches`` lists the
    config keys that turn an anti-collapse mechanism on or off (shown by ``collapselab methods``).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    projector_preset: ClassVar[str] = "simclr"
    default_augment: ClassVar[str] = "simclr"
    switches: ClassVar[tuple[str, ...]] = ("projector_bn",)

    def __init__(self, config: MethodConfig, backbone: nn.Module) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = backbone
        self.schedule = StepSchedule()
        self.projector = self.build_projector(int(backbone.out_dim))

    def build_projector(self, in_dim: int) -> MLPHead:
        c = self.config
        overrides: dict[str, Any] = {"bn": bool(c.projector_bn)}
        if c.projector_hidden_dim is not None:
            overrides["hidden_dim"] = int(c.projector_hidden_dim)
        if c.projector_out_dim is not None:
            overrides["out_dim"] = int(c.projector_out_dim)
        return mlp_head_preset(self.projector_preset, in_dim, size=c.projector, **overrides)  # type: ignore[arg-type]

    @property
    def eval_backbone(self) -> nn.Module:
        """The encoder whose features are the run's representation — what the kNN, the probes and
        a checkpoint's exported backbone use: the online ``backbone``, unless the method evaluates
        another network (I-JEPA: its target encoder, as the paper; DINO with ``eval_encoder:
        teacher``: the teacher's backbone)."""
        return self.backbone

    def _backbone_of(self, ema: EMATarget | None, use_ema: bool) -> nn.Module:
        """``ema``'s copy of the backbone (``ema.net[0]``) when there is one and ``use_ema``, else
        the online ``backbone``: the :attr:`eval_backbone` of methods that can evaluate an EMA copy."""
        return ema.net[0] if ema is not None and use_ema else self.backbone

    @property
    def eval_backbone_prefix(self) -> str:
        """The ``state_dict`` key prefix of :attr:`eval_backbone` (``"backbone."`` by default)."""
        wanted = self.eval_backbone
        return next(name for name, module in self.named_modules() if module is wanted) + "."

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named tensors of one batch: ``repr`` (backbone) and ``emb`` (projector)."""
        representation = self.backbone(x)
        return {"repr": representation, "emb": self.projector(representation)}

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def start_step(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        """Called by the trainer before every forward with the step about to run (0-based), the
        run's length and the epoch's length in steps, so schedules (teacher temperature, frozen
        layers) can follow them. Stored as :attr:`schedule`; plain attributes, not state: the
        trainer calls it again before the first step of a resumed run."""
        self.schedule = StepSchedule(int(step), max(int(total_steps), 1), max(int(steps_per_epoch), 1))

    def before_optimizer_step(self) -> None:
        """Called after the backward pass (and gradient clipping), before the optimiser step:
        e.g. drop the gradients of a layer that is frozen early in training. Default: nothing."""

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called after every optimiser step (EMA updates); returns scalars to log."""
        return {}

    def probe_metrics(self, probe: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, float]:
        """Method-specific numbers on the monitor's probe batch (eval mode), logged each epoch.

        ``probe`` is :meth:`embed` of the un-augmented probe images; ``labels`` their classes
        (or None). Default: nothing.
        """
        return {}

    def collapse_loss(self, batch_size: int) -> float | None:
        """The loss at complete collapse (every embedding the same point), for a global batch of
        ``batch_size``; None where no single value exists. The monitor compares the running loss
        with it (docs/diagnostics.md); ``tests/methods/test_collapse_loss.py`` checks each closed
        form against the loss evaluated on identical embeddings. Default: None."""
        return None

    def collapse_hints(self) -> list[str]:
        """Config settings known to invite collapse, as hints for the monitor's alarms."""
        hints = []
        if not self.config.projector_bn:
            hints.append("method.projector_bn=false: no BatchNorm restoring force in the projector")
        return hints

    @staticmethod
    def two_views(views: Sequence[torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if len(views) < 2:
            raise InputError(f"{name}: needs at least two views per batch, got {len(views)}")
        return views[0], views[1]


class SiameseMethod(SSLMethod):
    """Online network (backbone → projector → [predictor]) against a target branch that is an EMA
    copy of backbone → projector (``ema``), or the online branch itself with or without
    stop-gradient (``ema=off``). BYOL, SimSiam and MoCo are settings of this composition."""

    config_class: ClassVar[type[MethodConfig]] = SiameseConfig
    predictor_preset: ClassVar[str] = "byol_predictor"
    switches: ClassVar[tuple[str, ...]] = ("predictor", "stop_gradient", "ema", "projector_bn")

    def __init__(self, config: SiameseConfig, backbone: nn.Module) -> None:
        super().__init__(config, backbone)
        self.config: SiameseConfig = config
        dim = self.projector.out_dim
        self.predictor: nn.Module | None
        if config.predictor == "mlp":
            extra = {} if config.predictor_hidden_dim is None else {"hidden_dim": int(config.predictor_hidden_dim)}
            self.predictor = mlp_head_preset(self.predictor_preset, dim, size=config.projector, out_dim=dim, **extra)
        elif config.predictor == "linear":
            self.predictor = LinearPredictor(dim, init="identity")
        else:
            self.predictor = None
        momentum = ema_base(config.ema)
        self.target = (
            None if momentum is None
            else EMATarget(nn.Sequential(self.backbone, self.projector), momentum, config.ema_final)
        )

    def online_branch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The online network on one view: ``repr``, ``emb`` and ``pred`` (= ``emb`` without a predictor)."""
        out = self.embed(x)
        out["pred"] = self.predictor(out["emb"]) if self.predictor is not None else out["emb"]
        return out

    def branches(self, views: Sequence[torch.Tensor]) -> tuple[list[dict[str, torch.Tensor]], list[torch.Tensor]]:
        """Online outputs (``repr``, ``emb``, ``pred``) and target embeddings of each view.

        Targets are detached when they come from the EMA network or when ``stop_gradient``.
        """
        online = [self.online_branch(x) for x in views]
        if self.target is not None:
            targets = [self.target(x) for x in views]
        elif self.config.stop_gradient:
            targets = [out["emb"].detach() for out in online]
        else:
            targets = [out["emb"] for out in online]
        return online, targets

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        if self.target is None:
            return {}
        tau = self.target.update(nn.Sequential(self.backbone, self.projector), step, total_steps)
        return {"ema_momentum": tau}

    def collapse_hints(self) -> list[str]:
        hints = super().collapse_hints()
        c = self.config
        if c.predictor == "none":
            hints.append("method.predictor=none: without a predictor the collapsed solution is the attractor (Tian et al. 2021)")
        if ema_base(c.ema) is None and not c.stop_gradient:
            hints.append("method.stop_gradient=false with ema=off: the loss is minimised by collapse (Chen & He 2021)")
        return hints


# --------------------------------------------------------------------------- registry

METHODS: dict[str, type[SSLMethod]] = {}
"""Registered methods by name."""


def register_method(cls: type[SSLMethod]) -> type[SSLMethod]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    if not cls.name or cls.name in METHODS:
        raise InputError(f"register_method: name {cls.name!r} is empty or taken")
    METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(METHODS)


def method_class(name: str) -> type[SSLMethod]:
    """The registered class for ``name``; an unknown name raises with the list and the nearest."""
    if name not in METHODS:
        near = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise InputError(f"unknown method {name!r}; {hint}available: {', '.join(available_methods())}")
    return METHODS[name]


def build_method(config: MethodConfig | dict[str, Any], backbone: nn.Module) -> SSLMethod:
    """Build a method from its config (a dataclass or a plain dict with ``name``)."""
    if isinstance(config, dict):
        cls = method_class(str(config.get("name", "")))
        known = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InputError(f"method {cls.name!r}: unknown key(s) {unknown}; valid: {', '.join(sorted(known))}")
        config = cls.config_class(**config)
    cls = method_class(config.name)
    if not isinstance(config, cls.config_class):
        raise InputError(f"method {cls.name!r} needs a {cls.config_class.__name__}, got {type(config).__name__}")
    return cls(config, backbone)


def describe_methods() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, one-line summary, switches) for every registered method."""
    return [(name, METHODS[name].summary, METHODS[name].switches) for name in available_methods()]

