"""SwAV: swapped prediction of Sinkhorn-equipartitioned prototype codes over multi-crop views."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from collapselab import distributed
from collapselab._validation import InputError, check_number
from collapselab.diagnostics.clusters import code_usage
from collapselab.losses import swav
from collapselab.methods.base import (
    MethodConfig,
    MethodOutput,
    SSLMethod,
    register_method,
)
from collapselab.models import Prototypes


@dataclass
class SwAVConfig(MethodConfig):
    """SwAV defaults: the official ``main_swav.py`` (facebookresearch/swav) ImageNet values.

    ``n_prototypes`` K = 3,000; ``temperature`` τ = 0.1 of the prediction softmax;
    ``sinkhorn_eps`` ε = 0.05 and ``sinkhorn_iterations`` = 3 (Caron et al., NeurIPS 2020,
    Sec. 3.1). Three iterations give an *approximately* equal partition, not an exact one: each
    code sums to 1 exactly (the last step normalises the samples), but the prototype totals only
    tend to B/K. On random score matrices at ε = 0.05 their largest relative error is 0.10 to 0.43
    after 3 iterations when the scores spread over [-1, 1] (16- or 32-d unit vectors) and
    4e-4 to 0.014 when they sit near 0 (128-d), and below 1e-3 after 50 in both cases
    (tests/methods/test_swav.py); raise ``sinkhorn_iterations`` for a tighter partition.
    ``crops_for_assign`` = [0, 1]
    (the crops whose codes are predicted; the global crops come first); ``equipartition``:
    Sinkhorn codes (true) or the unconstrained softmax(scores/ε) (false, an ablation).
    ``freeze_prototypes_steps`` = 313: the prototypes receive no update during this many
    optimiser steps from the start (official ``freeze_prototypes_niters``, counted in steps).
    ``queue_length``: rows of the feature queue over all ranks (0 = off; official default 0,
    3,840 in its small-batch scripts), started at ``queue_start_epoch`` (official
    ``epoch_queue_starts`` = 15; a fraction of an epoch is allowed) and used once full.
    """

    name: str = "swav"
    n_prototypes: int = 3000
    temperature: float = 0.1
    sinkhorn_eps: float = 0.05
    sinkhorn_iterations: int = 3
    equipartition: bool = True
    crops_for_assign: list[int] = field(default_factory=lambda: [0, 1])
    freeze_prototypes_steps: int = 313
    queue_length: int = 0
    queue_start_epoch: float = 15.0

    def validate(self) -> None:
        super().validate()
        if isinstance(self.n_prototypes, bool) or int(self.n_prototypes) != self.n_prototypes or self.n_prototypes < 2:
            raise InputError(f"method.n_prototypes must be an integer >= 2, got {self.n_prototypes!r}")
        for key in ("temperature", "sinkhorn_eps"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InputError(f"method.{key} must be a positive number, got {value!r}")
        for key in ("sinkhorn_iterations", "freeze_prototypes_steps", "queue_length"):
            value = getattr(self, key)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise InputError(f"method.{key} must be an integer >= 0, got {value!r}")
        check_number(self.queue_start_epoch, "method.queue_start_epoch")
        crops = list(self.crops_for_assign)
        if not crops or any(isinstance(c, bool) or int(c) != c or c < 0 for c in crops) or len(set(crops)) != len(crops):
            raise InputError(
                f"method.crops_for_assign must be distinct crop indices >= 0 (e.g. [0, 1]), got {crops!r}"
            )


@register_method
class SwAV(SSLMethod):
    """Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments", NeurIPS 2020 (official code facebookresearch/swav, ``main_swav.py``,
    ``src/resnet50.py``).

    ẑ = normalize(projector(backbone(x))), scores x = ẑ·Cᵀ with K unit prototypes C,
    q_a = SinkhornKnopp(sg(x_a)) for the crops a in ``crops_for_assign``, and
    L = (1/|A|) Σ_a (1/(V − 1)) Σ_{v≠a} mean_b −Σ_k q_a log softmax(x_v/τ) (eq. 3; see
    :func:`collapselab.losses.swav`). As the official code: the prototypes are renormalised in
    place before each forward and get no update for the first ``freeze_prototypes_steps`` steps;
    consecutive crops of the same size share one backbone pass and all crops one projector
    pass (so BatchNorm statistics span them); the optional queue stores the assignment crops'
    ẑ of earlier batches and joins their scores to the Sinkhorn input once full.

    Distributed: Sinkhorn sums over every rank's rows (:func:`collapselab.losses.swav_assignments`).
    The queue is per rank, as the official code's (each rank keeps ``queue_length`` / W rows of
    its own batches, so the Sinkhorn input is the same set of rows as one process with the
    global batch and the whole queue); it is excluded from DDP's buffer broadcast and from the
    trainer's end-of-epoch one, and a checkpoint keeps every rank's queue (resumed on the same
    number of ranks, each gets its own back; on another number they start empty and refill).
    """

    name: ClassVar[str] = "swav"
    summary: ClassVar[str] = "swapped prediction of Sinkhorn-equipartitioned prototype codes (Caron et al. 2020)"
    config_class: ClassVar[type[MethodConfig]] = SwAVConfig
    projector_preset: ClassVar[str] = "swav"
    default_augment: ClassVar[str] = "swav"
    switches: ClassVar[tuple[str, ...]] = (
        "equipartition", "sinkhorn_iterations", "sinkhorn_eps", "n_prototypes", "queue_length",
        "freeze_prototypes_steps", "projector_bn",
    )

    queue: torch.Tensor
    queue_filled: torch.Tensor

    def __init__(self, config: SwAVConfig, backbone: nn.Module) -> None:
        super().__init__(config, backbone)
        self.config: SwAVConfig = config
        dim = self.projector.out_dim
        self.prototypes = Prototypes(dim, int(config.n_prototypes), normalize_input=False)
        # (assignment crops, rows per rank, dim), newest rows first; allocated when the queue starts
        self.register_buffer("queue", torch.zeros(len(config.crops_for_assign), 0, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._queue_rows = 0  # host copy of ``queue_filled`` (set on load): no read in a step
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, ["queue", "queue_filled"]
        )

    # ---- pieces ---------------------------------------------------------------------------

    def scores(self, emb: torch.Tensor) -> torch.Tensor:
        """ẑ·Cᵀ with C renormalised functionally (for ``embed``: it changes no state)."""
        return emb @ F.normalize(self.prototypes.weight, dim=1).T

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``repr``, ``emb`` = ẑ (the L2-normalised projector output) and ``codes`` =
        softmax(ẑ·Cᵀ/τ), the prototype probabilities the loss predicts with."""
        representation = self.backbone(x)
        emb = F.normalize(self.projector(representation), dim=1)
        codes = F.softmax(self.scores(emb) / self.config.temperature, dim=1)
        return {"repr": representation, "emb": emb, "codes": codes}

    def _multicrop_embed(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features and ẑ of all crops stacked (V·n rows, crop order): one backbone
        pass per run of consecutive same-size crops, one projector pass over all
        (official ``src/resnet50.py`` ``forward``)."""
        reprs, start = [], 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            reprs.append(self.backbone(torch.cat(list(views[start:end]))))
            start = end
        representation = torch.cat(reprs)
        return representation, F.normalize(self.projector(representation), dim=1)

    def _queue_capacity(self, n: int) -> int:
        """Rows of this rank's queue: ``queue_length`` cut to a multiple of the global batch
        (as the official code), divided among the ranks."""
        world = distributed.get_world_size()
        rows = (self.config.queue_length - self.config.queue_length % (n * world)) // world
        if rows < n:
            raise InputError(
                f"method.queue_length={self.config.queue_length} is shorter than the global batch "
                f"{n * world}; use a multiple of it, or 0 for no queue"
            )
        return rows

    def _queue_scores(self, emb: torch.Tensor, n: int) -> list[torch.Tensor | None] | None:
        """Scores of the queue (when full) for each assignment crop, then the batch's ẑ pushed
        in front (FIFO: the oldest rows drop off the end). None when the queue is off."""
        c = self.config
        if c.queue_length == 0:
            return None
        if self.queue.shape[1] == 0:
            if self.schedule.step < c.queue_start_epoch * self.schedule.steps_per_epoch:
                return None
            # the empty buffer's device and dtype follow .to()/.double() (float32 under autocast)
            self.queue = self.queue.new_zeros(len(c.crops_for_assign), self._queue_capacity(n), emb.shape[1])
            self._queue_rows = 0
        capacity = self.queue.shape[1]
        if n > capacity:
            raise InputError(f"swav: a batch of {n} does not fit the queue of {capacity} rows per rank")
        with torch.no_grad():
            prototypes = self.prototypes.weight.detach()
            full = self._queue_rows >= capacity
            scores = [self.queue[i] @ prototypes.T.to(self.queue.dtype) if full else None
                      for i in range(len(c.crops_for_assign))]
            self.queue[:, n:] = self.queue[:, :-n].clone()
            for i, crop in enumerate(c.crops_for_assign):
                self.queue[i, :n] = emb[crop * n:(crop + 1) * n].detach().to(self.queue.dtype)
            self._queue_rows = min(self._queue_rows + n, capacity)
            self.queue_filled.fill_(self._queue_rows)
        return scores

    # ---- training -------------------------------------------------------------------------

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        c = self.config
        if len(views) < 2:
            raise InputError(f"swav: needs at least two views per batch, got {len(views)}")
        if max(c.crops_for_assign) >= len(views):
            raise InputError(
                f"method.crops_for_assign={list(c.crops_for_assign)} indexes crops, but the "
                f"augmentation makes {len(views)} views"
            )
        n = views[0].shape[0]
        self.prototypes.normalize_()  # in place, outside autograd, before each forward (official)
        representation, emb = self._multicrop_embed(views)
        scores = self.prototypes(emb)
        queue_scores = self._queue_scores(emb, n)
        loss, terms = swav(
            list(scores.split(n)), c.temperature, c.sinkhorn_eps, c.sinkhorn_iterations,
            c.crops_for_assign, queue_scores=queue_scores, equipartition=c.equipartition,
            return_terms=True,
        )
        first = {"repr": representation[:n], "emb": emb[:n],
                 "codes": F.softmax(scores[:n].detach().float() / c.temperature, dim=1)}
        scalars: dict[str, float | torch.Tensor] = {
            "code_entropy": terms["code_entropy"],
            "prototypes_used": terms["prototypes_used"],
            "prototypes_used_fraction": terms["prototypes_used"] / c.n_prototypes,
            "queue_in_use": float(queue_scores is not None and queue_scores[0] is not None),
        }
        return MethodOutput(loss, first, scalars)

    def frozen_prototypes(self) -> bool:
        """Whether the step about to run keeps the prototypes fixed (step < freeze_prototypes_steps)."""
        return self.schedule.step < self.config.freeze_prototypes_steps

    def before_optimizer_step(self) -> None:
        """Drop the prototypes' gradient during the first ``freeze_prototypes_steps`` steps (the
        official code sets it to None: no update, no weight decay, no momentum)."""
        if self.frozen_prototypes():
            self.prototypes.weight.grad = None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the saved queue may have another number of rows than this one (none yet, or a run
        # snapshot taken before the queue started): take its shape, then its values
        key = prefix + "queue"
        if key in state_dict and state_dict[key].shape != self.queue.shape:
            self.queue = torch.zeros_like(state_dict[key], device=self.queue.device, dtype=self.queue.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._queue_rows = int(self.queue_filled)

    # ---- monitor --------------------------------------------------------------------------

    def probe_metrics(self, probe: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, float]:
        """Prototype usage on the probe: the fraction of prototypes that are some image's argmax
        (``code_used_fraction``), the perplexity of that usage and the mean code entropy ratio."""
        usage = code_usage(probe["codes"].float().cpu())
        keys = ("code_used_fraction", "code_perplexity", "code_sample_entropy_ratio")
        return {k: usage[k] for k in keys if k in usage}

    def collapse_loss(self, batch_size: int) -> float | None:
        """None: no single value. Identical embeddings give every crop the same score row s, so
        Sinkhorn (≥ 1 iteration) returns the uniform code 1/K for every sample and
        L = log Σ_k exp(s_k/τ) − (1/K) Σ_k s_k/τ, which depends on s = ẑ·Cᵀ (on where the point
        lies relative to the prototypes): log K when all scores are equal (the minimum, by
        Jensen), at most log K + (max_k s_k − mean_k s_k)/τ ≤ log K + 2/τ. With ``equipartition=false`` (codes softmax(s/ε)) it depends on s too."""
        return None

    def collapse_hints(self) -> list[str]:
        hints = super().collapse_hints()
        c = self.config
        if not c.equipartition:
            hints.append("method.equipartition=false: without Sinkhorn's equal partition every sample "
                         "may take the same prototype (the trivial solution SwAV's constraint excludes)")
        if c.equipartition and c.sinkhorn_iterations == 0:
            hints.append("method.sinkhorn_iterations=0: the codes are exp(scores/ε) normalised once "
                         "over the whole batch, with no equal partition of the prototypes")
        if c.sinkhorn_eps > 0.05:
            hints.append(f"method.sinkhorn_eps={c.sinkhorn_eps}: a strong entropy regularisation "
                         "tends to the trivial solution of uniform codes and one representation "
                         "(Caron et al. 2020, Sec. 3.1); the paper's ε is 0.05")
        return hints
