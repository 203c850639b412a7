"""I-JEPA: predict a target encoder's patch representations of masked blocks from one context block."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from collapselab import distributed
from collapselab._validation import InputError
from collapselab.data.masks import MaskConfig, sample_block_masks_numpy, select_patches
from collapselab.methods.base import (
    EMATarget,
    MethodConfig,
    MethodOutput,
    SSLMethod,
    ema_base,
    register_method,
)
from collapselab.models.vit import VisionTransformer, ViTPredictor

LOSSES = ("l2", "smooth_l1")
EVAL_ENCODERS = ("target", "context")


@dataclass
class IJEPAConfig(MethodConfig):
    """I-JEPA settings (Assran et al. 2023; official code facebookresearch/ijepa, ``src/train.py``,
    ``configs/in1k_vith14_ep300.yaml``).

    ``ema`` / ``ema_final``: the target encoder's momentum, linear from 0.996 to 1.0 over the run
    (official ``momentum_scheduler``; ``ema_final: null`` keeps it constant); ``ema: off`` makes
    the online encoder its own target, with gradient through the target branch unless
    ``stop_gradient``. ``predictor_dim`` / ``predictor_depth`` / ``predictor_heads``: the narrow
    ViT predictor (official: width 384, depth 12, the encoder's heads for ViT-H/14 — a 0.3×
    narrowing; here 96 = 192/2 wide, 6 deep, null heads = the encoder's). ``loss``: ``l2`` (default:
    the objective the paper states, Sec. 3) or ``smooth_l1`` (β = 1, the released code's
    ``F.smooth_l1_loss``; on layer-normalised targets most differences are below β, where it is
    ½·l2, so the two differ mainly in how large errors are weighted). ``masks``: :class:`~collapselab.data.masks.MaskConfig` fields
    (defaults: the official ImageNet multi-block masks, sized for a 14×14 grid; recipes scale them
    to their grid). ``mask_seed``: seed of the mask draws (null = ``torch.initial_seed()`` when
    the method is built, which the trainer sets from ``train.seed``). No projector:
    ``projector`` and ``projector_bn`` do nothing here, ``projector_hidden_dim`` /
    ``projector_out_dim`` are refused. ``eval_encoder``: the encoder whose average-pooled output
    tokens are the run's representation (``repr``: kNN, probes, the exported backbone) —
    ``target`` (default; the paper, App. A.1: "We use the target-encoder for evaluation and
    average pool its output") or ``context`` (the online encoder, as BYOL evaluates its online
    network); with ``ema: off`` the two are one network.
    """

    name: str = "ijepa"
    ema: Any = 0.996
    ema_final: float | None = 1.0
    stop_gradient: bool = True
    predictor_dim: int = 96
    predictor_depth: int = 6
    predictor_heads: int | None = None
    loss: str = "l2"
    masks: dict[str, Any] = field(default_factory=dict)
    mask_seed: int | None = None
    eval_encoder: str = "target"

    def validate(self) -> None:
        super().validate()
        if self.projector_hidden_dim is not None or self.projector_out_dim is not None:
            raise InputError("method.projector_hidden_dim / projector_out_dim: ijepa has no projector "
                             "(its predictor is set by predictor_dim, predictor_depth, predictor_heads)")
        momentum = ema_base(self.ema)
        if momentum is not None and not self.stop_gradient:
            raise InputError("method.stop_gradient=false needs method.ema=off: an EMA target encoder never "
                             "receives gradient, so the switch would do nothing")
        if self.ema_final is not None and not 0.0 <= float(self.ema_final) <= 1.0:
            raise InputError(f"method.ema_final must be in [0, 1] or null, got {self.ema_final}")
        if self.eval_encoder not in EVAL_ENCODERS:
            raise InputError(f"method.eval_encoder must be one of {', '.join(EVAL_ENCODERS)}, got {self.eval_encoder!r}")
        if self.loss not in LOSSES:
            raise InputError(f"method.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if int(self.predictor_dim) < 4 or int(self.predictor_dim) % 4:
            raise InputError(f"method.predictor_dim must be a positive multiple of 4 (2-D sine-cosine "
                             f"positions), got {self.predictor_dim}")
        if int(self.predictor_depth) < 1:
            raise InputError(f"method.predictor_depth must be >= 1, got {self.predictor_depth}")
        heads = self.predictor_heads
        if heads is not None and (int(heads) < 1 or int(self.predictor_dim) % int(heads)):
            raise InputError(f"method.predictor_heads must divide predictor_dim={self.predictor_dim}, got {heads}")
        if self.mask_seed is not None and int(self.mask_seed) < 0:
            raise InputError(f"method.mask_seed must be a non-negative integer or null, got {self.mask_seed}")
        MaskConfig.from_dict(dict(self.masks))


def ijepa_momentum(step: int, total_steps: int, base: float, final: float) -> float:
    """τ_k = τ_base + k·(τ_final − τ_base)/K, linear in the step k of K (I-JEPA official
    ``momentum_scheduler``, ``ema: [0.996, 1.0]``); steps past K keep τ_final."""
    return base + min(step, total_steps) * (final - base) / max(total_steps, 1)


class LinearEMATarget(EMATarget):
    """:class:`EMATarget` with I-JEPA's linear momentum schedule (:func:`ijepa_momentum`) instead
    of BYOL's cosine one; constant τ when ``final_momentum`` is None."""

    def momentum(self, step: int, total_steps: int) -> float:
        if self.final_momentum is None:
            return self.base_momentum
        return ijepa_momentum(step, total_steps, self.base_momentum, float(self.final_momentum))


def prediction_loss(predictions: torch.Tensor, targets: torch.Tensor, loss: str = "l2") -> torch.Tensor:
    """Mean over every entry of every predicted patch of every block::

        L = (1 / (B·M·K·D)) Σ_b Σ_m Σ_{j∈B_m} Σ_d ℓ(ŝ_{b,j,d} − s_{b,j,d}),
        ℓ(u) = u² ("l2", Assran et al. 2023, Sec. 3) or smooth-L1 with β = 1 ("smooth_l1",
        official ``F.smooth_l1_loss(z, h)``).

    This is :func:`collapselab.losses.latent_prediction` without its built-in stop-gradient: the
    caller detaches the targets (an EMA or stop-gradient target) or not (``ema=off``,
    ``stop_gradient=false``, the collapse ablation). Shapes: any, equal. Returns a scalar.
    Distributed: ``local`` (each rank's mean over its own images, masks and patches; DDP averages
    the gradients; tests/distributed/test_methods_ddp.py).
    """
    if loss == "l2":
        return F.mse_loss(predictions, targets)
    return F.smooth_l1_loss(predictions, targets, beta=1.0)


def _identity_head(dim: int) -> nn.Module:
    head = nn.Identity()
    head.out_dim = dim  # what generic code (probe, monitor) reads off a projector
    return head


@register_method
class IJEPA(SSLMethod):
    """Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive
    Architecture", CVPR 2023 (official code facebookresearch/ijepa).

    Per image, a context block x_c and M target blocks B_1..B_M of patches (multi-block masks,
    targets removed from the context). s_y = LN(f_ξ(x)) are the target encoder's output tokens of
    the *whole* image, layer-normalised over the features without affine (official
    ``F.layer_norm(h, (h.size(-1),))``); ŝ_m = g_φ(f_θ(x_c), positions of B_m) the predictor's
    outputs at the target positions from the context encoder's tokens:

        L = mean over b, m, j ∈ B_m, d of ℓ(ŝ_{b,m,j,d} − sg(s_{b,j,d}))     (Sec. 3; ℓ: l2 | smooth_l1)

    f_ξ follows f_θ by EMA with I-JEPA's linear momentum schedule (ξ ← τ_k ξ + (1 − τ_k) θ).
    Masks are drawn on the host with a NumPy generator seeded by (``mask_seed``, rank, draw
    count) and copied to the device, so a step reads no device value; the draw count is saved
    in the state dict (:meth:`get_extra_state`), so a resumed run draws the same masks.

    ``embed``: ``repr`` = the mean-pooled output tokens of the full image by :attr:`eval_backbone`
    — the target encoder (the paper's evaluation, App. A.1) unless ``eval_encoder: context`` —
    which is what the kNN, the linear probe and the exported backbone see; ``emb`` = the
    mean-pooled layer-normalised target tokens — the regression targets, whose collapse (one
    constant target, perfectly predictable) the monitor watches. No projector (an identity
    ``projector`` of width D keeps generic code working).
    """

    name: ClassVar[str] = "ijepa"
    summary: ClassVar[str] = "predict EMA-target patch features of masked blocks from a context block (Assran et al. 2023)"
    config_class: ClassVar[type[MethodConfig]] = IJEPAConfig
    default_augment: ClassVar[str] = "ijepa"
    switches: ClassVar[tuple[str, ...]] = ("ema", "stop_gradient")

    def __init__(self, config: IJEPAConfig, backbone: nn.Module) -> None:
        if not isinstance(backbone, VisionTransformer):
            raise InputError(f"ijepa needs a Vision Transformer backbone (model.backbone=vit_tiny or vit_small), "
                             f"got {type(backbone).__name__}")
        super().__init__(config, backbone)
        self.config: IJEPAConfig = config
        self.backbone: VisionTransformer
        self.mask_config = MaskConfig.from_dict(dict(config.masks))
        heads = int(config.predictor_heads or backbone.blocks[0].attn.num_heads)
        if int(config.predictor_dim) % heads:
            raise InputError(f"method.predictor_dim={config.predictor_dim} must be divisible by the predictor's "
                             f"{heads} heads (the encoder's, unless method.predictor_heads is set)")
        self.predictor = ViTPredictor(backbone.grid, backbone.embed_dim, int(config.predictor_dim),
                                      int(config.predictor_depth), heads)
        momentum = ema_base(config.ema)
        # Sequential(backbone): the trainer's compile_targets compiles net[0], the target ViT
        self.target = (None if momentum is None
                       else LinearEMATarget(nn.Sequential(backbone), momentum, config.ema_final))
        seed = config.mask_seed if config.mask_seed is not None else torch.initial_seed() % 2**63
        self.mask_seed, self.mask_draws = int(seed), 0

    @property
    def eval_backbone(self) -> nn.Module:
        """The target encoder f_ξ (``eval_encoder: target`` with an EMA target), else the online one."""
        return self._backbone_of(self.target, self.config.eval_encoder == "target")

    @property
    def _evaluates_target_network(self) -> bool:
        """Whether :attr:`eval_backbone` is the network that makes the target tokens."""
        return self.target is None or self.config.eval_encoder == "target"

    def build_projector(self, in_dim: int) -> nn.Module:  # type: ignore[override]
        return _identity_head(in_dim)

    # ---- masks: host RNG state -------------------------------------------------------------

    def draw_masks(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (B, n_ctx, K_c) and target (B, M, K_t) patch indices on ``device``, drawn on the
        host from ``default_rng([mask_seed, rank, draws])``; advances the draw count."""
        rng = np.random.default_rng([self.mask_seed, distributed.get_rank(), self.mask_draws])
        self.mask_draws += 1
        masks = sample_block_masks_numpy(batch_size, self.backbone.grid, self.mask_config, rng)
        return masks.context.to(device), masks.targets.to(device)

    def get_extra_state(self) -> torch.Tensor:
        """The mask RNG's state: (mask_seed, draws) as an int64 tensor (saved in checkpoints)."""
        return torch.tensor([self.mask_seed, self.mask_draws], dtype=torch.int64)

    def set_extra_state(self, state: Any) -> None:
        seed, draws = (int(v) for v in torch.as_tensor(state).tolist())
        self.mask_seed, self.mask_draws = seed, draws

    # ---- the two branches ------------------------------------------------------------------

    def target_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """f_ξ(x): the target encoder's output tokens of the full image (B, P, D), before the
        loss's layer norm; detached unless ``ema=off`` and ``stop_gradient=false``."""
        if self.target is not None:
            with torch.no_grad():
                return self.target.net[0](x, return_tokens=True)
        if self.config.stop_gradient:
            with torch.no_grad():
                return self.backbone(x, return_tokens=True)
        return self.backbone(x, return_tokens=True)

    def context_tokens(self, x: torch.Tensor, context_indices: torch.Tensor) -> torch.Tensor:
        """f_θ on the context patches: (B, n_ctx, K_c) indices → tokens (B·n_ctx, K_c, D). The
        indices come from the mask sampler, in range: no host-side range check."""
        tokens = self.backbone(x, keep_indices=context_indices, return_tokens=True, check_range=False)
        return tokens.reshape(-1, *tokens.shape[2:])

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """One view per image (the ``ijepa`` recipe; further views are not used)."""
        if len(views) < 1:
            raise InputError("ijepa: needs one view per batch, got none")
        x = views[0]
        side = (self.backbone.grid[0] * self.backbone.patch_size, self.backbone.grid[1] * self.backbone.patch_size)
        if tuple(x.shape[-2:]) != side:
            raise InputError(f"ijepa: views must be {side[0]}x{side[1]} (the ViT's training size; the masks are drawn "
                             f"on its {self.backbone.grid[0]}x{self.backbone.grid[1]} grid), got "
                             f"{tuple(x.shape[-2:])}; use data.augment=ijepa")
        b = x.shape[0]
        context_idx, target_idx = self.draw_masks(b, x.device)
        n_ctx = context_idx.shape[1]
        full = self.target_tokens(x)  # (B, P, D)
        targets = select_patches(F.layer_norm(full, (full.shape[-1],)), target_idx)  # (B, M, K_t, D)
        context = self.context_tokens(x, context_idx)  # (B·n_ctx, K_c, D)
        # every context block predicts every target block (official: repeat_interleave_batch)
        predictions = self.predictor(context, context_idx.reshape(b * n_ctx, -1),
                                     target_idx.repeat_interleave(n_ctx, dim=0), check_range=False)
        loss = prediction_loss(predictions, targets.repeat_interleave(n_ctx, dim=0), self.config.loss)
        # repr: the evaluated encoder's mean token of the full image (the target's, computed above;
        # for eval_encoder=context, the context encoder's mean token of the first context block);
        # emb: the mean of the layer-normalised target tokens (over the target blocks only)
        pooled = full.mean(dim=1) if self._evaluates_target_network else context.mean(dim=1)[::n_ctx]
        tensors = {"repr": pooled, "emb": targets.mean(dim=(1, 2))}
        scalars = {"context_patches": float(context_idx.shape[-1]), "target_patches": float(target_idx.shape[-1])}
        return MethodOutput(loss, tensors, scalars)

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``repr``: mean of :attr:`eval_backbone`'s tokens (= ``eval_backbone(x)``); ``emb``: mean
        of the layer-normalised target-encoder tokens (the online encoder's when ``ema=off``)."""
        target = (self.backbone if self.target is None else self.target.net[0])(x, return_tokens=True)
        tokens = target if self._evaluates_target_network else self.backbone(x, return_tokens=True)
        return {"repr": tokens.mean(dim=1), "emb": F.layer_norm(target, (target.shape[-1],)).mean(dim=1)}

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        if self.target is None:
            return {}
        tau = self.target.update(nn.Sequential(self.backbone), step, total_steps)
        return {"ema_momentum": tau}

    def collapse_loss(self, batch_size: int) -> float:
        """0: a collapsed target encoder gives every patch of every image the same token t, so
        the target LN(t) is one constant vector that the predictor reproduces exactly (its
        output bias), whatever the context; l2 and smooth-L1 are then 0, their minimum. (LN of a
        token whose features are all equal is ≈ 0 — x − mean(x) is 0 up to rounding, then
        divided by √(var + 1e-5) — and a constant token with unequal features gives a fixed
        unit-variance vector: either way one vector for every patch.)"""
        return 0.0

    def collapse_hints(self) -> list[str]:
        if ema_base(self.config.ema) is None and not self.config.stop_gradient:
            return ["method.stop_gradient=false with ema=off: the target is the online encoder with "
                    "gradient, so a constant target (loss 0) is the loss's easiest minimum"]
        return []


__all__ = ["IJEPA", "IJEPAConfig", "LinearEMATarget", "ijepa_momentum", "prediction_loss"]
