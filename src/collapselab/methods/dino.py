"""DINO: self-distillation from an EMA teacher with centring and sharpening, over multi-crop views."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from collapselab._validation import InputError, check_number
from collapselab.diagnostics.clusters import code_usage
from collapselab.engine.schedules import linear_warmup_constant
from collapselab.losses import dino, dino_center_update
from collapselab.methods.base import (
    EMATarget,
    MethodConfig,
    MethodOutput,
    SSLMethod,
    ema_base,
    register_method,
)
from collapselab.models import DINOBottleneck, DINOHead

# (hidden, bottleneck, K) of the head: the paper's (official main_dino.py / DINOHead defaults)
# and a small one for tiny images and CPUs.
HEAD_SIZES: dict[str, tuple[int, int, int]] = {"paper": (2048, 256, 65536), "small": (512, 128, 4096)}


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Logits in float32 (or float64) for the softmaxes: autocast's bf16/fp16 would be divided by
    τ_t = 0.04 and exponentiated."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass
class DINOConfig(MethodConfig):
    """DINO defaults, from the official code (facebookresearch/dino ``main_dino.py``).

    Head (``method.projector`` = paper | small): ``head_layers`` Linear layers of width
    ``projector_hidden_dim`` (2048 | 512) with GELU, to a bottleneck of ``projector_out_dim``
    (256 | 128), L2-normalised, then the weight-normalised last layer to ``out_dim`` = K
    (65,536 | 4,096) outputs, its norm fixed at 1 when ``norm_last_layer``. ``projector_bn``:
    BatchNorm in the head's hidden layers (official ``use_bn_in_head``, default False).

    Distillation: student temperature ``student_temp`` τ_s = 0.1; teacher temperature from
    ``teacher_temp_start`` linearly to ``teacher_temp`` over ``teacher_temp_warmup_epochs``, then
    constant (official defaults 0.04, 0.04, 0 epochs; the paper's ViT runs 0.04 → 0.07 over 30).
    Centring (``centering``) with momentum ``center_momentum`` m = 0.9. Teacher = EMA of the
    student's backbone and head, momentum ``ema`` = 0.996 → ``ema_final`` = 1 (cosine), or
    ``off`` (the teacher is the student with stop-gradient). The teacher sees the first
    ``global_crops`` = 2 views, the student all of them. The last layer's gradient is dropped
    during the first ``freeze_last_layer_epochs`` = 1 epoch. ``eval_encoder``: the backbone the
    run evaluates (``repr``: kNN, probes, the exported backbone) — ``student`` (default) or
    ``teacher`` (what the official ``eval_knn.py`` / ``eval_linear.py`` load, ``--checkpoint_key
    teacher``, after 100+ epochs). On short runs the teacher, with its momentum rising to 1,
    trails the student (digits recipe, 200 steps: 96.9 / 95.0 % kNN against 98.6 / 97.2 %, seeds
    0 / 1), hence the default. With ``ema: off`` the two are one network.
    """

    name: str = "dino"
    projector_bn: bool = False
    out_dim: int | None = None
    head_layers: int = 3
    norm_last_layer: bool = True
    global_crops: int = 2
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    teacher_temp_start: float = 0.04
    teacher_temp_warmup_epochs: float = 0.0
    centering: bool = True
    center_momentum: float = 0.9
    ema: Any = 0.996
    ema_final: float | None = 1.0
    freeze_last_layer_epochs: float = 1.0
    eval_encoder: str = "student"

    def validate(self) -> None:
        super().validate()
        if self.eval_encoder not in ("student", "teacher"):
            raise InputError(f"method.eval_encoder must be one of student, teacher, got {self.eval_encoder!r}")
        if self.out_dim is not None and (isinstance(self.out_dim, bool) or int(self.out_dim) < 2):
            raise InputError(f"method.out_dim must be an integer >= 2 (K, the head's outputs) or null, got {self.out_dim}")
        if int(self.head_layers) < 1:
            raise InputError(f"method.head_layers must be >= 1, got {self.head_layers}")
        if int(self.global_crops) < 1:
            raise InputError(f"method.global_crops must be >= 1, got {self.global_crops}")
        for key in ("student_temp", "teacher_temp", "teacher_temp_start"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InputError(f"method.{key} must be a positive number, got {value!r}")
        for key in ("teacher_temp_warmup_epochs", "freeze_last_layer_epochs"):
            check_number(getattr(self, key), f"method.{key}")
        if not 0.0 <= float(self.center_momentum) <= 1.0:
            raise InputError(f"method.center_momentum must be in [0, 1], got {self.center_momentum}")
        ema_base(self.ema)
        if self.ema_final is not None and not 0.0 <= float(self.ema_final) <= 1.0:
            raise InputError(f"method.ema_final must be in [0, 1] or null, got {self.ema_final}")

    def head_sizes(self) -> tuple[int, int, int]:
        """(hidden, bottleneck, K) after the preset and the overrides."""
        hidden, bottleneck, k = HEAD_SIZES[self.projector]
        return (int(self.projector_hidden_dim or hidden), int(self.projector_out_dim or bottleneck),
                int(self.out_dim or k))


@register_method
class DINO(SSLMethod):
    """Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021.

    Student g_s = head ∘ backbone on every view; teacher g_t = EMA copy of (backbone, head) on the
    first ``global_crops`` views (Algorithm 1; official ``main_dino.py``)::

        P_t = softmax((g_t(x_t) − c)/τ_t),   P_s = softmax(g_s(x_s)/τ_s)
        L   = mean over pairs (t, s ≠ t) of mean_b −Σ_k P_t[b,k] log P_s[b,k]     (eq. 1–3)
        c  ← m·c + (1 − m)·mean over teacher crops and batch of g_t                 (eq. 4)
        θ_t ← λ·θ_t + (1 − λ)·θ_s,  λ from ``ema`` to 1 by a cosine over the run

    Consecutive views of one size share a backbone forward (the official ``MultiCropWrapper``, so
    BatchNorm sees them together). Loss from :func:`collapselab.losses.dino`, in at least float32.

    ``embed`` gives ``repr`` (:attr:`eval_backbone`'s features: the student's backbone, the
    teacher's with ``eval_encoder: teacher``), ``emb`` (the student head's bottleneck output, before its
    L2-normalisation), ``logits`` (the student's head outputs g_s) and ``codes`` = the teacher's
    P_t at the current τ_t, so the cluster verdict judges the teacher's argmax usage and its
    per-sample entropy. ``projector`` is the head's MLP (its output is ``emb``); the whole head
    is ``head``.
    """

    name: ClassVar[str] = "dino"
    summary: ClassVar[str] = "self-distillation from an EMA teacher with centring + sharpening (Caron et al. 2021)"
    config_class: ClassVar[type[MethodConfig]] = DINOConfig
    default_augment: ClassVar[str] = "multicrop"
    switches: ClassVar[tuple[str, ...]] = ("centering", "teacher_temp", "ema", "projector_bn")

    center: torch.Tensor

    def __init__(self, config: DINOConfig, backbone: nn.Module) -> None:
        super().__init__(config, backbone)
        self.config: DINOConfig = config
        # build_projector made the whole head; keep it as ``head`` (``projector`` is its MLP)
        self.head: DINOHead = self._modules.pop("projector")  # type: ignore[assignment]
        momentum = ema_base(config.ema)
        self.teacher = (
            None if momentum is None
            else EMATarget(nn.Sequential(self.backbone, self.head), momentum, config.ema_final)
        )
        self.register_buffer("center", torch.zeros(1, self.head.out_dim))

    @property
    def eval_backbone(self) -> nn.Module:
        """The teacher's backbone (``eval_encoder: teacher`` with an EMA teacher), else the student's."""
        return self._backbone_of(self.teacher, self.config.eval_encoder == "teacher")

    @property
    def projector(self) -> DINOBottleneck:  # type: ignore[override]
        """The head's MLP up to the bottleneck (the ``emb`` the monitor watches)."""
        return self.head.mlp

    def build_projector(self, in_dim: int) -> DINOHead:  # type: ignore[override]
        c: DINOConfig = self.config  # type: ignore[assignment]
        hidden, bottleneck, k = c.head_sizes()
        return DINOHead(in_dim, k, hidden, bottleneck, int(c.head_layers), bool(c.projector_bn),
                        bool(c.norm_last_layer))

    # ---- schedules (host floats from self.schedule: no tensor is read) -------------------------

    def teacher_temperature(self) -> float:
        """τ_t: linear from ``teacher_temp_start`` to ``teacher_temp`` over the warm-up epochs
        (counted in steps), then constant."""
        c, s = self.config, self.schedule
        warmup = round(float(c.teacher_temp_warmup_epochs) * s.steps_per_epoch)
        return linear_warmup_constant(s.step, warmup, float(c.teacher_temp_start), float(c.teacher_temp))

    def last_layer_frozen(self) -> bool:
        """True during the first ``freeze_last_layer_epochs`` (official ``cancel_gradients_last_layer``)."""
        return self.schedule.epoch < float(self.config.freeze_last_layer_epochs)

    # ---- forward ------------------------------------------------------------------------------

    @staticmethod
    def multicrop(backbone: nn.Module, head: DINOHead, views: Sequence[torch.Tensor]) -> tuple[
            list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Backbone features, bottleneck outputs and logits per view; consecutive views of one
        shape go through the networks as one batch (official ``MultiCropWrapper``)."""
        groups: list[list[torch.Tensor]] = []
        for x in views:
            if groups and groups[-1][0].shape == x.shape:
                groups[-1].append(x)
            else:
                groups.append([x])
        feats, bottleneck, logits = [], [], []
        for group in groups:
            r = backbone(torch.cat(group) if len(group) > 1 else group[0])
            z = head.mlp(r)
            g = head.scores(z)
            feats.extend(r.chunk(len(group)))
            bottleneck.extend(z.chunk(len(group)))
            logits.extend(g.chunk(len(group)))
        return feats, bottleneck, logits

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        c = self.config
        n_global = int(c.global_crops)
        if len(views) < max(2, n_global):
            raise InputError(f"dino: needs at least max(2, global_crops={n_global}) views, got {len(views)}")
        feats, bottleneck, logits = self.multicrop(self.backbone, self.head, views)
        student = [_at_least_float32(g) for g in logits]
        representation = feats[0]
        if self.teacher is None:  # ema=off: the teacher is the student, with stop-gradient
            teacher = [g.detach() for g in student[:n_global]]
        else:
            with torch.no_grad():
                teacher_feats, _, teacher_logits = self.multicrop(*self.teacher.net, views[:n_global])
            teacher = [_at_least_float32(g) for g in teacher_logits]
            if self.eval_backbone is not self.backbone:
                representation = teacher_feats[0]
        temperature = self.teacher_temperature()
        loss, terms = dino(student, teacher, self.center, float(c.student_temp), temperature, return_terms=True)
        if c.centering and self.training:
            self.center.copy_(dino_center_update(self.center, teacher, float(c.center_momentum)))
        scalars: dict[str, float | torch.Tensor] = {
            **terms, "center_norm": self.center.norm(), "teacher_temp": temperature,
        }
        return MethodOutput(loss, {"repr": representation, "emb": bottleneck[0]}, scalars)

    def before_optimizer_step(self) -> None:
        """Drop the last layer's gradient while it is frozen (official ``cancel_gradients_last_layer``)."""
        if self.last_layer_frozen():
            for p in self.head.last_layer_parameters():
                p.grad = None

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        """θ_t ← λ·θ_t + (1 − λ)·θ_s. The teacher keeps its own BatchNorm running statistics (from
        its own training-mode forwards, as the official code's teacher): ``EMATarget`` copies the
        student's, which do not fit the lagging teacher weights in eval mode (the probe's codes)."""
        if self.teacher is None:
            return {}
        buffers = list(self.teacher.net.buffers())
        own = [b.clone() for b in buffers]
        tau = self.teacher.update(nn.Sequential(self.backbone, self.head), step, total_steps)
        for buffer, value in zip(buffers, own, strict=True):
            buffer.copy_(value)
        return {"ema_momentum": tau}

    # ---- monitor ------------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``repr`` (:attr:`eval_backbone`'s features), ``emb`` (the student's bottleneck, not
        normalised), ``logits`` (student g_s) and ``codes`` (teacher P_t = softmax((g_t − c)/τ_t)
        at the current τ_t)."""
        student = self.backbone(x)
        bottleneck = self.head.mlp(student)
        logits = self.head.scores(bottleneck)
        if self.teacher is None:
            representation, teacher = student, logits
        else:
            teacher_feats = self.teacher.net[0](x)
            teacher = self.teacher.net[1](teacher_feats)
            representation = teacher_feats if self.eval_backbone is not self.backbone else student
        codes = F.softmax((_at_least_float32(teacher) - self.center) / self.teacher_temperature(), dim=1)
        return {"repr": representation, "emb": bottleneck, "logits": logits, "codes": codes}

    def probe_metrics(self, probe: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, float]:
        """On the probe images: teacher entropy / log K (1 = uniform collapse), KL(P_t ‖ P_s) of
        teacher and student on the same image (→ 0 at collapse, Caron et al. 2021 Fig. 7) and the
        fraction of the K outputs that are some image's teacher argmax."""
        codes = probe["codes"].double().cpu()
        log_teacher = codes.clamp_min(1e-300).log()
        log_student = F.log_softmax(probe["logits"].double().cpu() / float(self.config.student_temp), dim=1)
        k = codes.shape[1]
        return {
            "teacher_entropy_ratio": float(-(codes * log_teacher).sum(1).mean()) / math.log(k),
            "teacher_student_kl": float((codes * (log_teacher - log_student)).sum(1).mean()),
            "code_used_fraction": code_usage(codes)["code_used_fraction"],
        }

    def collapse_loss(self, batch_size: int) -> float:
        """Uniform collapse: a teacher whose output equals the centre for every image gives
        P_t = uniform, and the student that matches it is uniform too: L = log K.

        The other form, one-hot collapse (one output dominates whatever the image; centring off),
        sends L → 0 — the loss's minimum, which no single value can flag; the monitor sees it
        through the codes instead (one code in use: the cluster verdict)."""
        return math.log(self.head.out_dim)

    def collapse_hints(self) -> list[str]:
        c = self.config
        hints = []
        if not c.centering:
            hints.append("method.centering=false: without centring one output dimension dominates (one-hot collapse; "
                         "Caron et al. 2021 Sec. 5.3)")
        if float(c.teacher_temp) >= float(c.student_temp):
            hints.append(f"method.teacher_temp={c.teacher_temp} >= student_temp={c.student_temp}: no sharpening, "
                         "centring alone drives the teacher to uniform (uniform collapse)")
        if ema_base(c.ema) is None:
            hints.append("method.ema=off: a teacher that is the student itself collapses (Caron et al. 2021, Sec. 5.2)")
        return hints
