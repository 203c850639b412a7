"""I-JEPA multi-block masks: one large context block and several target blocks per image.

Follows the multi-block strategy of Assran et al. 2023 (I-JEPA, Sec. 3 and the official
``MaskCollator`` in facebookresearch/ijepa, ``src/masks/multiblock.py``; defaults from its
ImageNet configs): on a grid of patches, ``num_targets`` = 4 target blocks of area fraction
U(0.15, 0.2) and aspect ratio (h/w) U(0.75, 1.5), and ``num_context`` = 1 context block of area
fraction U(0.85, 1.0) and aspect ratio 1, from which every target patch is removed (no overlap),
keeping at least ``min_keep`` = 10 patches.

As in the official collator, the block *sizes* are drawn once per batch (so every sample has
the same number of target patches), positions per sample. Choices that differ, deliberately:
scale and aspect ratio use independent draws (the official code reuses one uniform for both);
a block's top-left corner is uniform over every position where it fits (the official code never
places a block against the bottom/right edge); a sample whose context keeps fewer than
``min_keep`` patches gets a fresh context position, up to ``max_tries`` times, then an error
(the official code eventually relaxes the no-overlap rule). As in the official collator, the
context of every sample is truncated to the smallest context size in the batch, keeping the
first patches in raster order, so the indices stack into one tensor.

Two samplers draw the same masks *distribution*: :func:`sample_block_masks` with torch's RNG on any
device (it reads its draws back to the host, e.g. the block sizes), and
:func:`sample_block_masks_numpy` with a NumPy generator on the host, for a training step that must
not read a device tensor (the I-JEPA method: the masks are drawn on the host, then copied to the
device). Same seed, different draws: the two use different random streams.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from collapselab._validation import InputError


@dataclass(frozen=True)
class MaskConfig:
    """Block-mask settings (I-JEPA defaults)."""

    context_scale: tuple[float, float] = (0.85, 1.0)
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect_ratio: tuple[float, float] = (0.75, 1.5)
    context_aspect_ratio: tuple[float, float] = (1.0, 1.0)
    num_context: int = 1
    num_targets: int = 4
    min_keep: int = 10
    allow_overlap: bool = False
    max_tries: int = 20

    def __post_init__(self) -> None:
        for name in ("context_scale", "target_scale", "target_aspect_ratio", "context_aspect_ratio"):
            lo, hi = getattr(self, name)
            upper = 1.0 if "scale" in name else math.inf
            if not 0 < lo <= hi <= upper:
                raise InputError(f"masks: {name} must satisfy 0 < low <= high"
                                 + (" <= 1" if upper == 1.0 else "") + f", got {(lo, hi)}")
        if self.num_context < 1 or self.num_targets < 1:
            raise InputError(f"masks: need num_context >= 1 and num_targets >= 1, got "
                             f"{self.num_context}, {self.num_targets}")

    @classmethod
    def from_dict(cls, d: Mapping) -> MaskConfig:
        """Build from a plain dict or OmegaConf config (YAML); lists become tuples, unknown keys raise."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise InputError(f"masks: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
        return cls(**{str(k): tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
                      for k, v in d.items()})


@dataclass
class BlockMasks:
    """Patch indices (raster order on a ``grid`` of (H, W) patches).

    ``context``: int64 (B, num_context, K_ctx); ``targets``: int64 (B, num_targets, K_tgt);
    ``context_mask`` / ``target_mask``: the same as bool (B, n, H·W).
    """

    context: torch.Tensor
    targets: torch.Tensor
    context_mask: torch.Tensor
    target_mask: torch.Tensor
    grid: tuple[int, int]
    target_size: tuple[int, int]
    context_size: tuple[int, int]


def block_size(scale: float, aspect_ratio: float, grid: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a block covering ``scale`` of the grid with h/w ≈ ``aspect_ratio``.

    ``keep = int(H·W·scale)``, ``h = round(√(keep·ar))``, ``w = round(√(keep/ar))``, each kept below
    the grid side (as the official collator) and at least 1.
    """
    gh, gw = grid
    keep = int(gh * gw * scale)
    h = max(1, min(round(math.sqrt(keep * aspect_ratio)), gh - 1 if gh > 1 else 1))
    w = max(1, min(round(math.sqrt(keep / aspect_ratio)), gw - 1 if gw > 1 else 1))
    return h, w


def _blocks(batch: int, count: int, size: tuple[int, int], grid: tuple[int, int],
            generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Bool (batch, count, H·W): rectangles of ``size`` at uniformly random positions."""
    gh, gw = grid
    h, w = size
    u = torch.rand((2, batch, count), generator=generator, device=device)
    top = torch.floor(u[0] * (gh - h + 1)).clamp_max(gh - h).to(torch.int64)
    left = torch.floor(u[1] * (gw - w + 1)).clamp_max(gw - w).to(torch.int64)
    rows = torch.arange(gh, device=device).view(1, 1, gh, 1)
    cols = torch.arange(gw, device=device).view(1, 1, 1, gw)
    top, left = top[..., None, None], left[..., None, None]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return inside.reshape(batch, count, gh * gw)


def _first_true(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the first ``k`` True entries along the last axis (raster order)."""
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)
    return order[..., :k]


def _checked_grid(batch_size: int, grid: int | tuple[int, int]) -> tuple[int, int]:
    grid = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if grid[0] < 2 or grid[1] < 2 or batch_size < 1:
        raise InputError(f"masks: need a grid of at least 2x2 patches and batch_size >= 1, got grid {grid}, "
                         f"batch_size {batch_size}")
    return grid


def _block_sizes(u: Sequence[float], config: MaskConfig, grid: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The batch's target and context block sizes from four uniform draws ``u`` (scale, aspect
    ratio of each)."""
    lo, hi = config.target_scale
    alo, ahi = config.target_aspect_ratio
    t_size = block_size(lo + u[0] * (hi - lo), alo + u[1] * (ahi - alo), grid)
    lo, hi = config.context_scale
    alo, ahi = config.context_aspect_ratio
    return t_size, block_size(lo + u[2] * (hi - lo), alo + u[3] * (ahi - alo), grid)


def _min_keep_error(config: MaskConfig, grid: tuple[int, int], t_size: tuple[int, int],
                    c_size: tuple[int, int]) -> InputError:
    return InputError(
        f"masks: after {config.max_tries} tries some context blocks keep fewer than min_keep="
        f"{config.min_keep} patches once the targets are removed (grid {grid}, target block "
        f"{t_size} x {config.num_targets}, context block {c_size}); use a finer grid, smaller "
        "target_scale, fewer targets or a lower min_keep")


def sample_block_masks(batch_size: int, grid: int | tuple[int, int], config: MaskConfig | None = None,
                       generator: torch.Generator | None = None,
                       device: str | torch.device | None = None) -> BlockMasks:
    """Draw I-JEPA context/target masks for ``batch_size`` images on a patch ``grid``.

    ``grid``: patches per side, e.g. 14 for a 224-px image with 16-px patches, or (H, W).
    Randomness comes from ``generator`` (on ``device``; default: the generator's device).
    """
    config = config or MaskConfig()
    grid = _checked_grid(batch_size, grid)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and torch.device(generator.device).type != device.type:
        raise InputError(f"masks: generator on {generator.device} but device {device}")
    t_size, c_size = _block_sizes(torch.rand(4, generator=generator, device=device).tolist(), config, grid)

    target_mask = _blocks(batch_size, config.num_targets, t_size, grid, generator, device)
    forbidden = target_mask.any(dim=1, keepdim=True)  # (B, 1, P)
    context_mask = _blocks(batch_size, config.num_context, c_size, grid, generator, device)
    if not config.allow_overlap:
        context_mask &= ~forbidden
    for _ in range(config.max_tries):
        short = context_mask.sum(-1) < config.min_keep  # (B, n_ctx)
        if not bool(short.any()):
            break
        fresh = _blocks(batch_size, config.num_context, c_size, grid, generator, device)
        if not config.allow_overlap:
            fresh &= ~forbidden
        context_mask = torch.where(short[..., None], fresh, context_mask)
    else:
        if bool((context_mask.sum(-1) < config.min_keep).any()):
            raise _min_keep_error(config, grid, t_size, c_size)
    k_ctx = int(context_mask.sum(-1).min())
    context = _first_true(context_mask, k_ctx)
    truncated = torch.zeros_like(context_mask).scatter_(-1, context, True)
    k_tgt = t_size[0] * t_size[1]
    targets = _first_true(target_mask, k_tgt)
    return BlockMasks(context, targets, truncated, target_mask, grid, t_size, c_size)


def _blocks_numpy(rng: np.random.Generator, batch: int, count: int, size: tuple[int, int],
                  grid: tuple[int, int]) -> np.ndarray:
    """Bool (batch, count, H·W): rectangles of ``size``, top-left corners uniform over every
    position where they fit (as :func:`_blocks`)."""
    gh, gw = grid
    h, w = size
    top = rng.integers(0, gh - h + 1, size=(batch, count))[..., None, None]
    left = rng.integers(0, gw - w + 1, size=(batch, count))[..., None, None]
    rows = np.arange(gh).reshape(1, 1, gh, 1)
    cols = np.arange(gw).reshape(1, 1, 1, gw)
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return inside.reshape(batch, count, gh * gw)


def _first_true_numpy(mask: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` True entries along the last axis (raster order), int64."""
    return np.argsort(~mask, axis=-1, kind="stable")[..., :k].astype(np.int64)


def sample_block_masks_numpy(batch_size: int, grid: int | tuple[int, int], config: MaskConfig | None = None,
                             rng: np.random.Generator | None = None) -> BlockMasks:
    """Draw I-JEPA context/target masks on the host with a NumPy generator (no tensor is read).

    The same procedure as :func:`sample_block_masks` (block sizes once per batch, positions per
    sample, targets removed from the context, ``min_keep`` with ``max_tries`` fresh context
    positions, the context truncated to the batch's smallest in raster order), drawn from
    ``rng`` (default: a fresh unseeded generator). Returns :class:`BlockMasks` of CPU tensors
    (made from the NumPy arrays without a copy): move ``context`` / ``targets`` to the device
    with ``.to(device)``, a host → device copy.
    """
    config = config or MaskConfig()
    grid = _checked_grid(batch_size, grid)
    rng = rng if rng is not None else np.random.default_rng()
    t_size, c_size = _block_sizes(rng.random(4), config, grid)

    target_mask = _blocks_numpy(rng, batch_size, config.num_targets, t_size, grid)
    allowed = ~target_mask.any(axis=1, keepdims=True)  # (B, 1, P)
    context_mask = _blocks_numpy(rng, batch_size, config.num_context, c_size, grid)
    if not config.allow_overlap:
        context_mask &= allowed
    for _ in range(config.max_tries):
        short = context_mask.sum(-1) < config.min_keep  # (B, n_ctx)
        if not short.any():
            break
        fresh = _blocks_numpy(rng, batch_size, config.num_context, c_size, grid)
        if not config.allow_overlap:
            fresh &= allowed
        context_mask = np.where(short[..., None], fresh, context_mask)
    else:
        if (context_mask.sum(-1) < config.min_keep).any():
            raise _min_keep_error(config, grid, t_size, c_size)
    k_ctx = int(context_mask.sum(-1).min())
    context = _first_true_numpy(context_mask, k_ctx)
    truncated = np.zeros_like(context_mask)
    np.put_along_axis(truncated, context, True, axis=-1)
    targets = _first_true_numpy(target_mask, t_size[0] * t_size[1])
    return BlockMasks(torch.from_numpy(context), torch.from_numpy(targets), torch.from_numpy(truncated),
                      torch.from_numpy(target_mask), grid, t_size, c_size)


def select_patches(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Pick patch tokens by index: ``tokens`` (B, P, D), ``indices`` (B, n, K) → (B, n, K, D).

    ``out[b, j, k] = tokens[b, indices[b, j, k]]``: e.g. the context tokens fed to the I-JEPA
    encoder, or the target tokens the predictor must match.
    """
    if tokens.ndim != 3 or indices.ndim != 3 or tokens.shape[0] != indices.shape[0]:
        raise InputError(f"select_patches: expected tokens (B, P, D) and indices (B, n, K) with the same B, "
                         f"got {tuple(tokens.shape)} and {tuple(indices.shape)}")
    b, n, k = indices.shape
    idx = indices.reshape(b, n * k, 1).expand(b, n * k, tokens.shape[-1])
    return tokens.gather(1, idx).reshape(b, n, k, tokens.shape[-1])


__all__ = ["BlockMasks", "MaskConfig", "block_size", "sample_block_masks", "sample_block_masks_numpy",
           "select_patches"]
