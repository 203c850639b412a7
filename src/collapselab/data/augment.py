"""Batched, on-device image augmentations and the per-method view recipes.

All operations work on a whole batch ``x`` of float images in [0, 1], shape (B, C, H, W)
(C = 1 or 3), on whatever device ``x`` lives, with *per-sample* parameters given as tensors.
Random parameters are drawn first (:func:`sample_view_params`, from an explicit
``torch.Generator`` on the batch's device) and applied second (:func:`apply_view`), so every
random choice can be inspected and tested. There are no per-image Python loops.

Semantics follow torchvision's tensor transforms (v0.15+) unless stated:

* random resized crop: torchvision's ``RandomResizedCrop.get_params`` (10 attempts of area
  fraction ~ U(scale), log aspect ratio ~ U(log ratio), then a central-crop fallback), resized
  with bilinear interpolation equal to ``F.interpolate(box, size, mode="bilinear",
  align_corners=False)`` of the sliced box (no antialiasing);
* brightness ``clamp(f·x)``; contrast ``clamp(f·x + (1 − f)·mean(gray(x)))`` (one mean per image);
  saturation ``clamp(f·x + (1 − f)·gray(x))``; hue: rotate the HSV hue by ``h`` turns;
  factors ~ U[max(0, 1 − s), 1 + s], hue shift ~ U[−h, h];
* colour-jitter order: ``"random"`` (default, as torchvision's ``ColorJitter``: a fresh random
  order of the four operations per image) or ``"fixed"`` (brightness, contrast, saturation, hue);
* grayscale ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601-2 luma, as PIL/torchvision), replicated
  to three channels;
* Gaussian blur: separable kernel ``exp(−t²/2σ²)`` normalised to sum 1, per-sample σ ~ U(sigma),
  reflect padding; default kernel size ≈ 10 % of the side, odd (SimCLR/BYOL: 23 px at 224);
* solarise ``x ↦ 1 − x where x ≥ threshold`` (threshold 0.5 on [0, 1], BYOL);
* normalise ``(x − mean) / std`` per channel.

Two execution paths compute the same views (to float rounding). On the CPU, :func:`color_jitter`
and :func:`apply_view` work on the selected images only (``torch.nonzero``, index copies, host
reads of counts) and hue runs in cache-sized slices. Off the CPU (see :func:`_sync_free`) they
take a *sync-free* path: every op runs on the whole batch and per-image choices are selections
(``torch.where``) or identity coefficients, so no value is read back to the host and a training
step never waits for the accelerator; only the config (known on the host) skips work.

Recipe defaults (documented with sources in ``docs/data.md``): ``simclr`` — SimCLR (Chen et al.
2020, App. A/B.9) CIFAR setting: crop scale (0.08, 1), flip 0.5, jitter p 0.8 with strength
s = 0.5 (0.4, 0.4, 0.4, 0.1), grayscale 0.2, no blur; ``byol`` — BYOL (Grill et al. 2020, Table 6):
jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, blur p 1.0 / 0.1, solarise p 0.0 / 0.2;
``multicrop`` — DINO (Caron et al. 2021, ``main_dino.py``): two global crops scale (0.4, 1) with
blur 1.0 / 0.1 and solarise 0 / 0.2, six local crops scale (0.05, 0.4) at 96/224 of the side
with blur 0.5.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from collapselab._validation import InputError
from collapselab.data import native as _native

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")

# ---------------------------------------------------------------------------------------------
# Input checks


def to_float_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Validate a batch (B, C, H, W) and return float32 in [0, 1] (uint8 is divided by 255).

    A NumPy array is accepted and converted (on the CPU)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        hint = " (add a batch axis with images[None])" if images.ndim == 3 else ""
        raise InputError(f"{name}: expected shape (B, C, H, W), got {tuple(images.shape)}{hint}")
    if images.shape[1] not in (1, 3):
        raise InputError(f"{name}: expected 1 or 3 channels in axis 1, got shape {tuple(images.shape)}"
                         " (channels-last input? use images.permute(0, 3, 1, 2))")
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if images.dtype.is_floating_point:
        return images.to(torch.float32)
    raise InputError(f"{name}: expected uint8 (0..255) or floating point (0..1) pixels, got {images.dtype}")


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and torch.device(generator.device).type != device.type:
        raise InputError(f"generator lives on {generator.device} but the images on {device}; create it "
                         f"with torch.Generator(device={str(device)!r}).manual_seed(seed)")


# set True (tests) to take the sync-free path for CPU tensors too
_FORCE_SYNC_FREE = False


def _sync_free(x: torch.Tensor, override: bool | None = None) -> bool:
    """Whether ops on ``x`` take the sync-free path: ``override`` if given, else for tensors off
    the CPU (or everywhere while ``_FORCE_SYNC_FREE`` is set). That path never reads a tensor's
    value on the host (no ``nonzero``, ``.any()`` tests, ``.tolist()``, host-made constants),
    which on a GPU would make the CPU wait for the device; it computes on the whole batch instead."""
    if override is not None:
        return override
    return _FORCE_SYNC_FREE or x.device.type != "cpu"


def _per_image(mask: torch.Tensor) -> torch.Tensor:
    """A per-image bool (B,) as (B, 1, 1, 1), to select whole images with ``torch.where``."""
    return mask.reshape(-1, 1, 1, 1)


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=device)


def _uniform(low: float, high: float, shape: Sequence[int], generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    return low + (high - low) * _rand(shape, generator, device)


# ---------------------------------------------------------------------------------------------
# Geometric ops


def sample_crop_boxes(batch: int, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                      device: str | torch.device = "cpu", attempts: int = 10) -> torch.Tensor:
    """Per-sample random-resized-crop boxes, int64 (B, 4) = (top, left, box_height, box_width).

    torchvision's algorithm, vectorised: ``attempts`` candidates per sample with area fraction
    ~ U(scale) and aspect ratio w/h = exp(U(log ratio)), rounded sides; the first candidate that
    fits is used, else a central crop with the aspect ratio clamped to ``ratio``. Position
    ~ uniform over the valid offsets.
    """
    device = torch.device(device)
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * _uniform(scale[0], scale[1], (batch, attempts), generator, device)
    aspect = torch.exp(_uniform(log_lo, log_hi, (batch, attempts), generator, device))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)  # first True (0 if none)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    found = ok.any(dim=1)
    # fallback: central crop with the aspect ratio clamped to `ratio`
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    h = torch.where(found, h, torch.full_like(h, fh))
    w = torch.where(found, w, torch.full_like(w, fw))
    u = _rand((2, batch), generator, device)
    top = torch.floor(u[0] * (height - h + 1)).clamp_max(height - h)
    left = torch.floor(u[1] * (width - w + 1)).clamp_max(width - w)
    top = torch.where(found, top, torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def _interp_taps(start: torch.Tensor, length: torch.Tensor, out_size: int, dtype: torch.dtype,
                 reverse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps resampling [start, start+length) to ``out_size`` samples, as
    ``F.interpolate(..., align_corners=False)`` on the sliced box: source index pairs
    (i0, i1) (int64 (B, out_size)) and the weight ``w1`` of i1. ``reverse`` (bool (B,)) lists
    the output samples of the selected rows in reverse order (a mirror)."""
    o = torch.arange(out_size, device=start.device, dtype=dtype)[None]
    if reverse is not None:
        o = torch.where(reverse[:, None], (out_size - 1) - o, o)
    length_f = length.to(dtype)[:, None]
    src = (o + 0.5) * (length_f / out_size) - 0.5
    src = torch.minimum(src.clamp_min(0.0), length_f - 1)
    i0 = torch.floor(src)
    w1 = src - i0
    i1 = torch.minimum(i0 + 1, length_f - 1)
    offset = start[:, None]
    return i0.to(torch.int64) + offset, i1.to(torch.int64) + offset, w1


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int | tuple[int, int],
                 flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image to its box (top, left, h, w) and resize bilinearly to ``size``.

    Equals ``F.interpolate(x[i:i+1, :, t:t+h, l:l+w], size, mode="bilinear",
    align_corners=False)`` per image (no antialiasing), computed for the whole batch as two
    separable gather + lerp passes. ``flip`` (bool (B,)) mirrors the selected outputs
    horizontally at no extra cost.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    b, c, height, width = x.shape
    # rows: select whole image rows (contiguous) from the (B·C·H, W) view, then blend
    r0, r1, rw = _interp_taps(boxes[:, 0], boxes[:, 2], out_h, x.dtype)
    plane = (torch.arange(b * c, device=x.device) * height).reshape(b, c, 1)
    rows = x.reshape(b * c * height, width)
    top = rows.index_select(0, (plane + r0[:, None, :]).reshape(-1)).reshape(b, c, out_h, width)
    bottom = rows.index_select(0, (plane + r1[:, None, :]).reshape(-1)).reshape(b, c, out_h, width)
    y = top.lerp_(bottom, rw[:, None, :, None])
    # columns: gather within each row
    c0, c1, cw = _interp_taps(boxes[:, 1], boxes[:, 3], out_w, x.dtype, reverse=flip)
    shape = (b, c, out_h, out_w)
    left = y.gather(3, c0[:, None, None, :].expand(shape))
    right = y.gather(3, c1[:, None, None, :].expand(shape))
    return left.lerp_(right, cw[:, None, None, :])


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images selected by ``mask`` (bool (B,)) left-right."""
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


# ---------------------------------------------------------------------------------------------
# Colour ops (x float in [0, 1])


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma 0.299 R + 0.587 G + 0.114 B, shape (B, 1, H, W); a 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    gray = r * LUMA_WEIGHTS[0]
    return gray.add_(g, alpha=LUMA_WEIGHTS[1]).add_(b, alpha=LUMA_WEIGHTS[2]).unsqueeze(1)


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    return f.reshape(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f·x, 0, 1)`` with one factor per image (f = 1: identity)."""
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f·x + (1 − f)·m, 0, 1)``, m = mean of the image's grayscale (one per image)."""
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_sample(factor).to(x.dtype)
    return (x * f).add_((1 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f·x + (1 − f)·gray(x), 0, 1)``; identity on 1-channel images."""
    if x.shape[1] == 1:
        return x
    f = _per_sample(factor).to(x.dtype)
    return (x * f).add_(rgb_to_grayscale(x).mul_(1 - f)).clamp_(0.0, 1.0)


# elements per slice of the batch in hue's ~20 elementwise passes: ~1.5 MiB of float32 stays in
# cache between passes (on CPU ~1.5-2x faster than sweeping a whole batch of 512 each pass)
_CACHE_BLOCK_ELEMENTS = 4 * 3 * 2**15
# n for the channels R, G, B in HSV→RGB's closed form (see _hue_into)
_HUE_OFFSETS = (5.0, 3.0, 1.0)


def _batch_slices(x: torch.Tensor) -> list[slice]:
    """Slices of the batch for hue's passes: cache-sized on the CPU, one slice (the whole
    batch: few, large kernels) on the sync-free path."""
    if _sync_free(x):
        return [slice(0, x.shape[0])]
    step = max(1, _CACHE_BLOCK_ELEMENTS // max(1, x[0].numel()))
    return [slice(i, i + step) for i in range(0, x.shape[0], step)]


def _hue_sigma(shift: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 3) per-image, per-channel offsets sigma_n ≡ 6·shift + n − 5 (mod 6) in [−5, 1)."""
    turns = shift.to(dtype)
    turns = turns - torch.round(turns)  # exact; keeps 6·shift small and precise
    # (5, 3, 1) made on the device: torch.tensor(_HUE_OFFSETS, device=...) is a host→device
    # copy, which synchronises with a GPU
    offsets = torch.arange(len(_HUE_OFFSETS), dtype=dtype, device=shift.device).mul_(-2.0).add_(5.0)
    return torch.remainder(6.0 * turns[:, None] + offsets, 6.0).sub_(5.0)


def _hue_into(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Hue rotation of a 3-channel batch by :func:`_hue_sigma` offsets, written into ``out``
    (which may be ``x`` itself)."""
    r, g, b = x.unbind(1)
    vmax = torch.maximum(torch.maximum(r, g), b)
    vmin = torch.minimum(torch.minimum(r, g), b)
    chroma = vmax - vmin
    base = vmin.sub_(chroma)  # 2·min − max
    # hue in sixths: (g − b)/C if R is the maximum, else (b − r)/C + 2 if G is, else
    # (r − g)/C + 4; C = 0 gives 0 (its numerator is 0). Selection by lerp with 0/1 weights
    # (exact, and much faster than torch.where on CPU); the R test is applied last so it wins ties
    is_r = torch.eq(r, vmax, out=torch.empty_like(r))
    is_g = torch.eq(g, vmax, out=vmax)
    numerator = torch.lerp((r - g).add_(chroma, alpha=4.0), (b - r).add_(chroma, alpha=2.0), is_g)
    numerator = numerator.lerp_(g - b, is_r)
    h6 = numerator.div_(chroma.clamp_min(1e-12))  # in [-1, 5]
    # k_n = h6 + 6·shift + n (n = 5, 3, 1) and T_n = clamp(d_n, 1, 2) with d_n the distance of
    # k_n from 2 on the hue circle of length 6; v_n = h6 + sigma_n ≡ k_n − 5 (mod 6) lies in
    # [−6, 6], where d_n = ||v_n| − 3|
    v = torch.add(h6.unsqueeze(1), sigma[:, :, None, None])
    u = v.abs_().sub_(3.0).abs_().clamp_(1.0, 2.0)
    return torch.addcmul(base.unsqueeze(1), chroma.unsqueeze(1), u, out=out)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of each image by ``shift`` turns (any real number; 0 and ±1 are the
    identity); value and saturation are kept. Identity on 1-channel images.

    With V = max(r, g, b), m = min(r, g, b), C = V − m and hue h in turns, HSV→RGB in closed
    form is ``channel_n = V − C·clamp(min(k, 4 − k), 0, 1)``, ``k = (n + 6(h + shift)) mod 6``
    for n = 5, 3, 1 (R, G, B); computed as the equal ``(2m − V) + C·clamp(d_n, 1, 2)`` with
    d_n the distance of k from 2 on the circle of length 6. Runs slice by slice of the batch so
    that its ~20 elementwise passes stay in cache.
    """
    if x.shape[1] == 1:
        return x
    out = torch.empty_like(x)
    sigma = _hue_sigma(shift, x.dtype)
    for s in _batch_slices(x):
        _hue_into(x[s], sigma[s], out[s])
    return out


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``x ↦ 1 − x`` where ``x ≥ threshold``, for the images selected by ``mask`` (bool (B,))."""
    flip = (x >= threshold).to(x.dtype).mul_(mask.to(x.dtype).reshape(-1, 1, 1, 1))
    return torch.lerp(x, 1.0 - x, flip)  # weights 0/1: exact x or 1 − x


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, kernel_size) normalised 1-D Gaussian kernels ``exp(−t²/(2σ²))``, t centred on 0."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise InputError(f"blur kernel_size must be a positive odd integer, got {kernel_size}")
    t = torch.arange(kernel_size, device=sigma.device, dtype=torch.float32) - (kernel_size - 1) / 2
    s = sigma.to(torch.float32).clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one σ per image (reflect padding; σ → 0 is the identity)."""
    kernels = gaussian_kernels(sigma, kernel_size).to(x.dtype)
    pad = kernel_size // 2
    if pad == 0:
        return x
    mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
    width, height = x.shape[-1], x.shape[-2]
    xp = F.pad(x, (pad, pad, 0, 0), mode=mode)
    out = sum(kernels[:, j, None, None, None] * xp[..., j:j + width] for j in range(kernel_size))
    yp = F.pad(out, (0, 0, pad, pad), mode=mode)
    return sum(kernels[:, j, None, None, None] * yp[..., j:j + height, :] for j in range(kernel_size))


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x − mean) / std`` per channel."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    if m.shape[1] != x.shape[1] or s.shape[1] != x.shape[1]:
        raise InputError(f"normalize: mean/std have {m.shape[1]}/{s.shape[1]} values for {x.shape[1]} channels")
    return (x - m) / s


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a uint8 or [0, 1] float image tensor, on the [0, 1] scale."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for start in range(0, images.shape[0], chunk):
        x = to_float_images(images[start:start + chunk]).to(torch.float64)
        total += x.sum(dim=(0, 2, 3)).cpu()
        total_sq += (x * x).sum(dim=(0, 2, 3)).cpu()
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


# ---------------------------------------------------------------------------------------------
# One view: configuration, parameters, application


@dataclass(frozen=True)
class ViewConfig:
    """How one augmented view is made. Probabilities are per image.

    ``size``: output side in pixels (int), a fraction of the input side (float in (0, 1]), or
    None for the input size. ``blur_kernel``: odd kernel size, None for ≈ 10 % of the output side.
    """

    size: int | float | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_order: str = "random"
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= float(p) <= 1.0:
                raise InputError(f"augment: {name} must be a probability in [0, 1], got {p}")
        for name in ("brightness", "contrast", "saturation"):
            if float(getattr(self, name)) < 0:
                raise InputError(f"augment: {name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= float(self.hue) <= 0.5:
            raise InputError(f"augment: hue must be in [0, 0.5] turns, got {self.hue}")
        if self.jitter_order not in ("random", "fixed"):
            raise InputError(f"augment: jitter_order must be 'random' or 'fixed', got {self.jitter_order!r}")
        for name, lo_min in (("crop_scale", 0.0), ("crop_ratio", 0.0), ("blur_sigma", 0.0)):
            v = getattr(self, name)
            if len(v) != 2 or not lo_min < float(v[0]) <= float(v[1]):
                raise InputError(f"augment: {name} must be a pair (low, high) with 0 < low <= high, got {v}")
        if float(self.crop_scale[1]) > 1.0:
            raise InputError(f"augment: crop_scale is a fraction of the image area, at most 1; got {self.crop_scale}")
        if self.size is not None and (float(self.size) <= 0 or (isinstance(self.size, float) and self.size > 1)):
            raise InputError(f"augment: size must be a positive int (pixels), a fraction in (0, 1], or null; got {self.size}")
        if self.blur_kernel is not None and (int(self.blur_kernel) < 1 or int(self.blur_kernel) % 2 == 0):
            raise InputError(f"augment: blur_kernel must be a positive odd integer, got {self.blur_kernel}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Output (H, W) for an input of (height, width)."""
        if self.size is None:
            return height, width
        if isinstance(self.size, float):
            return max(1, round(self.size * height)), max(1, round(self.size * width))
        return int(self.size), int(self.size)

    def kernel_size(self, out_h: int, out_w: int) -> int:
        """Blur kernel size: ``blur_kernel`` or the odd integer near 10 % of the side (min 3)."""
        if self.blur_kernel is not None:
            return int(self.blur_kernel)
        return max(3, int(0.1 * min(out_h, out_w)) | 1)


def _factor_range(strength: float) -> tuple[float, float]:
    return max(0.0, 1.0 - strength), 1.0 + strength


def sample_view_params(batch: int, height: int, width: int, config: ViewConfig,
                       generator: torch.Generator | None = None,
                       device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Draw every random choice of one view for ``batch`` images of size (height, width).

    Returns tensors on ``device``: ``boxes`` (B, 4), ``flip``, ``jitter``, ``grayscale``,
    ``blur``, ``solarize`` (bool (B,)), ``brightness``, ``contrast``, ``saturation`` factors,
    ``hue`` shift, ``sigma`` (float (B,)) and ``order`` (int64 (B, 4): position k holds the index
    into ``JITTER_OPS`` applied k-th).
    """
    device = torch.device(device)
    c = config
    p = {"boxes": sample_crop_boxes(batch, height, width, c.crop_scale, c.crop_ratio, generator, device)}
    coins = _rand((5, batch), generator, device)
    p["flip"] = coins[0] < c.flip_p
    p["jitter"] = coins[1] < c.jitter_p
    p["grayscale"] = coins[2] < c.grayscale_p
    p["blur"] = coins[3] < c.blur_p
    p["solarize"] = coins[4] < c.solarize_p
    p["brightness"] = _uniform(*_factor_range(c.brightness), (batch,), generator, device)
    p["contrast"] = _uniform(*_factor_range(c.contrast), (batch,), generator, device)
    p["saturation"] = _uniform(*_factor_range(c.saturation), (batch,), generator, device)
    p["hue"] = _uniform(-c.hue, c.hue, (batch,), generator, device)
    if c.jitter_order == "random":
        p["order"] = torch.argsort(_rand((batch, 4), generator, device), dim=1)
    else:
        p["order"] = torch.arange(4, device=device).expand(batch, 4).clone()
    p["sigma"] = _uniform(c.blur_sigma[0], c.blur_sigma[1], (batch,), generator, device)
    return p


def _affine_jitter_(x: torch.Tensor, factor: torch.Tensor, gray_coef: torch.Tensor,
                    mean_coef: torch.Tensor) -> None:
    """In place ``x ← clamp(f·x + a·gray(x) + c·mean(gray(x)), 0, 1)``, per image (f, a, c):
    brightness, contrast and saturation in one form (see :func:`color_jitter`)."""
    gray = rgb_to_grayscale(x)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    bias = torch.addcmul(mean.mul_(_per_sample(mean_coef)), gray, _per_sample(gray_coef))
    torch.addcmul(bias, x, _per_sample(factor), out=x).clamp_(0.0, 1.0)


def _hue_(x: torch.Tensor, sigma: torch.Tensor) -> None:
    for s in _batch_slices(x):
        _hue_into(x[s], sigma[s], x[s])



def jitter_active(config: ViewConfig, channels: int) -> list[bool]:
    """Which of ``JITTER_OPS`` act: strength > 0, and saturation/hue only on 3 channels."""
    return [float(getattr(config, op)) > 0 and not (op in ("saturation", "hue") and channels == 1)
            for op in JITTER_OPS]


def jitter_coefficients(params: Mapping[str, torch.Tensor],
                        active: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 4) per image and slot: the affine form's (f, a, c) of :func:`color_jitter`,
    ``clamp(f·x + a·gray(x) + c·mean(gray(x)))``. The identity (1, 0, 0) where the slot holds
    hue or an op that is off (saturation of a 1-channel image)."""
    order = params["order"]
    one = torch.ones_like(params["brightness"])
    sat = params["saturation"] if active[2] else one
    f = torch.stack([params["brightness"], params["contrast"], sat, one], dim=1).gather(1, order)
    return f, (1 - f) * (order == 2), (1 - f) * (order == 1)


def color_jitter(x: torch.Tensor, params: Mapping[str, torch.Tensor], config: ViewConfig,
                 inplace: bool = False, sync_free: bool | None = None) -> torch.Tensor:
    """Apply brightness/contrast/saturation/hue to the images with ``params["jitter"]`` set, each
    image in its own ``params["order"]``; an operation whose strength is 0 is skipped.

    Batched: the jittered images are gathered once and sorted (stably) by the slot that holds
    hue. At slot k the images whose hue is at slot k form one contiguous run, rotated by the hue
    op; every other image gets brightness, contrast or saturation, all of the one form
    ``clamp(f·x + a·gray(x) + c·mean(gray(x)))`` (brightness a = c = 0; contrast a = 0,
    c = 1 − f; saturation a = 1 − f, c = 0), applied in one pass with per-image (f, a, c) on
    the one or two runs around the hue run. So each slot costs at most three calls whatever the
    orders; the batch is scattered back at the end. ``inplace=True`` writes the result into
    ``x`` (which must not be needed afterwards). Strength 0 draws the factor 1, the identity.

    ``sync_free`` (default: off the CPU, see :func:`_sync_free`) runs
    :func:`_color_jitter_dense` instead, which gives the same result without host reads.
    """
    active = jitter_active(config, x.shape[1])
    if not any(active):
        return x
    if _sync_free(x, sync_free):
        return _color_jitter_dense(x, params, active, inplace)
    if not bool(params["jitter"].any()):
        return x
    chosen = torch.nonzero(params["jitter"]).squeeze(1)
    hue = JITTER_OPS.index("hue")
    hue_slot = torch.argmax((params["order"][chosen] == hue).to(torch.int8), dim=1)
    sort = torch.argsort(hue_slot, stable=True)
    chosen = chosen[sort]  # per row of xs
    xs = x.index_select(0, chosen)
    f, gray_coef, mean_coef = (t[chosen] for t in jitter_coefficients(params, active))
    sigma = _hue_sigma(params["hue"][chosen], x.dtype) if active[hue] else None
    bounds = [0, *torch.bincount(hue_slot, minlength=4).cumsum(0).tolist()]
    n = xs.shape[0]
    for slot in range(4):
        lo, hi = (bounds[slot], bounds[slot + 1]) if active[hue] else (n, n)
        if any(active[:3]):
            for run in (slice(0, lo), slice(hi, n)):
                if run.stop > run.start:
                    _affine_jitter_(xs[run], f[run, slot], gray_coef[run, slot], mean_coef[run, slot])
        if hi > lo:
            _hue_(xs[lo:hi], sigma[lo:hi])
    out = x if inplace else x.clone()
    return out.index_copy_(0, chosen, xs)


def _color_jitter_dense(x: torch.Tensor, params: Mapping[str, torch.Tensor], active: Sequence[bool],
                        inplace: bool = False) -> torch.Tensor:
    """:func:`color_jitter` without host synchronisation: every slot runs on the whole batch.

    At slot k the affine form (brightness/contrast/saturation) runs on all images with per-image
    coefficients that are the identity (f, a, c) = (1, 0, 0) where the image is not jittered or
    its slot k holds hue (``clamp(1·x + 0·gray + 0·mean) = x`` exactly on [0, 1]); then hue
    rotates the whole batch in one slice and ``torch.where`` keeps the rotation only for the
    jittered images whose slot k is hue. Nothing depends on a count read back from the device,
    at the price of computing every op for every image (up to 4 hue passes instead of 1).
    ``active``: :func:`jitter_active` (ops whose strength is 0 are skipped, as on the CPU path).
    """
    jittered = params["jitter"][:, None]
    f, gray_coef, mean_coef = jitter_coefficients(params, active)
    f = torch.where(jittered, f, 1.0)
    gray_coef = torch.where(jittered, gray_coef, 0.0)
    mean_coef = torch.where(jittered, mean_coef, 0.0)
    hue = JITTER_OPS.index("hue")
    out = x if inplace else x.clone()
    if active[hue]:
        hue_at = (params["order"] == hue) & jittered  # (B, 4): this image's hue runs at slot k
        sigma = _hue_sigma(params["hue"], x.dtype)
        rotated = torch.empty_like(out)
    for slot in range(4):
        if any(active[:3]):
            _affine_jitter_(out, f[:, slot], gray_coef[:, slot], mean_coef[:, slot])
        if active[hue]:
            _hue_into(out, sigma, rotated)
            torch.where(_per_image(hue_at[:, slot]), rotated, out, out=out)
    return out


def _channel_constants(values: Sequence[float] | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-channel ``values`` as a (1, C, 1, 1) tensor like ``x``, filled on its device: no
    host→device copy (which synchronises with a GPU) for Python numbers."""
    if isinstance(values, torch.Tensor):
        return values.to(device=x.device, dtype=x.dtype).reshape(1, -1, 1, 1)
    flat = [float(v) for v in values]
    out = x.new_empty((1, len(flat), 1, 1))
    for i, v in enumerate(flat):
        out[:, i].fill_(v)
    return out


def apply_view(images: torch.Tensor, params: Mapping[str, torch.Tensor], config: ViewConfig,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               sync_free: bool | None = None) -> torch.Tensor:
    """Make one view from ``images`` (uint8 or float, (B, C, H, W)) with drawn ``params``.

    Order (as the published recipes): resized crop + flip, colour jitter, grayscale, blur,
    solarise, normalise (if ``mean``/``std`` given). Returns float32 (B, C, h, w).

    ``sync_free`` (default: off the CPU, see :func:`_sync_free`): the path with no host
    synchronisation — dense colour jitter (:func:`_color_jitter_dense`), grayscale and blur
    computed for the whole batch and selected per image with ``torch.where``, normalisation
    constants filled on the device. Same views as the CPU path, which touches only the selected
    images.
    """
    x = to_float_images(images)
    dense = _sync_free(x, sync_free)
    out_h, out_w = config.output_size(*x.shape[-2:])
    x = resized_crop(x, params["boxes"], (out_h, out_w), flip=params["flip"])
    x = color_jitter(x, params, config, inplace=True, sync_free=dense)  # x: the crop's fresh output
    if dense:  # whole batch, then select per image (exact): no host reads
        if config.grayscale_p > 0 and x.shape[1] == 3:
            torch.where(_per_image(params["grayscale"]), rgb_to_grayscale(x), x, out=x)
        if config.blur_p > 0:
            blurred = gaussian_blur(x, params["sigma"], config.kernel_size(out_h, out_w))
            torch.where(_per_image(params["blur"]), blurred, x, out=x)
    else:  # only the selected images
        if config.grayscale_p > 0 and x.shape[1] == 3 and bool(params["grayscale"].any()):
            idx = torch.nonzero(params["grayscale"]).squeeze(1)
            x.index_copy_(0, idx, rgb_to_grayscale(x.index_select(0, idx)).expand(-1, 3, -1, -1))
        if config.blur_p > 0 and bool(params["blur"].any()):
            idx = torch.nonzero(params["blur"]).squeeze(1)
            x[idx] = gaussian_blur(x[idx], params["sigma"][idx], config.kernel_size(out_h, out_w))
    if config.solarize_p > 0:
        x = solarize(x, params["solarize"], config.solarize_threshold)
    if mean is not None and std is not None:
        if dense:
            m, sd = _channel_constants(mean, x), _channel_constants(std, x)
        else:
            m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
            sd = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
        if m.shape[1] != x.shape[1] or sd.shape[1] != x.shape[1]:
            raise InputError(f"normalize: mean/std have {m.shape[1]}/{sd.shape[1]} values for {x.shape[1]} channels")
        x = x.sub_(m).div_(sd)  # x is a fresh tensor made by the crop: safe in place
    return x


BACKENDS = ("auto", "torch", "native")


def use_native(backend: str, images: torch.Tensor) -> bool:
    """Whether ``backend`` makes views of ``images`` with the native kernel
    (:mod:`collapselab.data.native`): ``"native"`` always (CPU tensors only; an error if the
    kernel cannot be built), ``"auto"`` for CPU tensors when the kernel is available, ``"torch"``
    never."""
    if backend not in BACKENDS:
        close = difflib.get_close_matches(str(backend), BACKENDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"augment: unknown backend {backend!r}{hint} Known: {', '.join(BACKENDS)}")
    if backend == "torch" or not isinstance(images, torch.Tensor):
        return False
    on_cpu = images.device.type == "cpu"
    if backend == "native":
        if not on_cpu:
            raise InputError(f"augment: backend 'native' runs on the CPU, but the images are on {images.device}; "
                             "use backend 'auto' or 'torch'")
        return True
    return on_cpu and _native.available()


def augment_view(images: torch.Tensor, config: ViewConfig | None = None,
                 generator: torch.Generator | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, backend: str = "auto") -> torch.Tensor:
    """Draw parameters and make one view of a batch (see :func:`apply_view`)."""
    config = config or ViewConfig()
    native = use_native(backend, images)
    x = to_float_images(images)
    _check_generator(generator, x.device)
    params = sample_view_params(x.shape[0], x.shape[2], x.shape[3], config, generator, x.device)
    if native:
        return _native.apply_view_native(images, params, config, mean, std)
    return apply_view(x, params, config, mean, std)


# ---------------------------------------------------------------------------------------------
# Recipes: named groups of views


@dataclass(frozen=True)
class ViewGroup:
    """``count`` views made with the same configuration (e.g. six local crops)."""

    name: str
    config: ViewConfig
    count: int = 1


@dataclass
class MultiViewAugment:
    """A recipe: calling it on a batch returns the list of views, group by group.

    ``mean``/``std`` (per channel, on the [0, 1] scale) normalise every view; None skips it.
    ``backend``: ``"auto"`` (the fused native kernel for CPU batches when it is available, else
    the torch ops), ``"torch"`` or ``"native"`` (see :func:`use_native`). Both compute the same
    views from the same random draws.
    """

    name: str
    groups: list[ViewGroup]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    backend: str = "auto"

    @property
    def num_views(self) -> int:
        return sum(g.count for g in self.groups)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        native = use_native(self.backend, images)
        # the kernel reads uint8 or float itself: for it the input checks run on an empty slice
        x = images if native else to_float_images(images)
        if native:
            to_float_images(images[:0])
        _check_generator(generator, x.device)
        views = []
        for group in self.groups:
            for _ in range(group.count):
                params = sample_view_params(x.shape[0], x.shape[2], x.shape[3], group.config, generator, x.device)
                if native:
                    views.append(_native.apply_view_native(x, params, group.config, self.mean, self.std))
                else:
                    views.append(apply_view(x, params, group.config, self.mean, self.std))
        return views


_VIEW_FIELDS = {f.name for f in fields(ViewConfig)}

RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "simclr": {"views": {"count": 2}},
    "byol": {
        "view1": {"saturation": 0.2, "blur_p": 1.0, "solarize_p": 0.0},
        "view2": {"saturation": 0.2, "blur_p": 0.1, "solarize_p": 0.2},
    },
    "multicrop": {
        "global1": {"crop_scale": (0.4, 1.0), "saturation": 0.2, "blur_p": 1.0},
        "global2": {"crop_scale": (0.4, 1.0), "saturation": 0.2, "blur_p": 0.1, "solarize_p": 0.2},
        "local": {"count": 6, "size": 96 / 224, "crop_scale": (0.05, 0.4), "saturation": 0.2, "blur_p": 0.5},
    },
    # SwAV (Caron et al. 2020, official main_swav.py): 2 x 224 crops of scale (0.14, 1) and
    # 6 x 96 of (0.05, 0.14); colour distortion of strength 1 (0.8, 0.8, 0.8, 0.2, p 0.8),
    # grey 0.2, blur 0.5, flips.
    "swav": {
        "global": {"count": 2, "crop_scale": (0.14, 1.0), "brightness": 0.8, "contrast": 0.8,
                   "saturation": 0.8, "hue": 0.2, "blur_p": 0.5},
        "local": {"count": 6, "size": 96 / 224, "crop_scale": (0.05, 0.14), "brightness": 0.8,
                  "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "blur_p": 0.5},
    },
    # I-JEPA (Assran et al. 2023, official configs): one random resized crop of scale (0.3, 1),
    # no flip, no colour distortion, no blur: the masks, not the augmentations, make the task.
    "ijepa": {"view": {"crop_scale": (0.3, 1.0), "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0}},
}


def _unknown_key(key: str, valid: Sequence[str], where: str) -> InputError:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return InputError(f"augment: unknown key {key!r} in {where}{hint} Valid keys: {', '.join(sorted(valid))}")


def _as_pairs(d: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values: sequences (YAML lists, OmegaConf ListConfig) become tuples."""
    return {str(k): tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in d.items()}


def build_augment(config: str | Mapping[str, Any] | None = "simclr", **overrides: Any) -> MultiViewAugment:
    """Build a recipe from a name or a plain dict (as read from YAML).

    Dict form::

        recipe: byol            # simclr | byol | multicrop | swav | ijepa | custom (start from no groups)
        backend: auto           # auto | torch | native (see MultiViewAugment)
        size: 32                # any ViewConfig field here applies to every group
        mean: [0.49, 0.48, 0.45]
        std: [0.25, 0.24, 0.26]
        views:                  # per-group overrides; new names add groups (custom recipes)
          view2: {solarize_p: 0.3}
          local: {count: 8}

    Keyword ``overrides`` are merged on top of the dict's top level. Unknown keys raise
    :class:`InputError` naming the closest valid key.
    """
    cfg: dict[str, Any] = {"recipe": config} if isinstance(config, str) or config is None else dict(config)
    cfg.update(overrides)
    recipe = cfg.pop("recipe", None) or cfg.pop("name", None) or "simclr"
    if recipe != "custom" and recipe not in RECIPES:
        close = difflib.get_close_matches(str(recipe), list(RECIPES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"augment: unknown recipe {recipe!r}{hint} Known: {', '.join(RECIPES)}, custom")
    mean, std = cfg.pop("mean", None), cfg.pop("std", None)
    backend = str(cfg.pop("backend", None) or "auto")
    use_native(backend, torch.empty(0))  # validates the name
    if (mean is None) != (std is None):
        raise InputError("augment: give both mean and std (per channel) or neither")
    view_overrides = cfg.pop("views", None)
    view_overrides = {} if view_overrides is None else view_overrides
    if not isinstance(view_overrides, Mapping):
        raise InputError(f"augment: 'views' must map group names to settings, got {type(view_overrides).__name__}")
    common = _as_pairs(cfg)
    for key in common:
        if key not in _VIEW_FIELDS:
            raise _unknown_key(key, [*_VIEW_FIELDS, "recipe", "mean", "std", "views", "backend"],
                               "the augment settings")
    base = dict(RECIPES.get(recipe, {}))
    names = list(base) + [n for n in view_overrides if n not in base]
    groups = []
    for name in names:
        settings = {**base.get(name, {}), **common, **_as_pairs(view_overrides.get(name) or {})}
        count = int(settings.pop("count", 1))
        for key in settings:
            if key not in _VIEW_FIELDS:
                raise _unknown_key(key, [*_VIEW_FIELDS, "count"], f"views.{name}")
        if count < 0:
            raise InputError(f"augment: views.{name}.count must be >= 0, got {count}")
        groups.append(ViewGroup(name, replace(ViewConfig(), **settings), count))
    if not any(g.count for g in groups):
        raise InputError(f"augment: recipe {recipe!r} makes no views; add groups under 'views'")
    return MultiViewAugment(str(recipe), groups,
                            tuple(float(m) for m in mean) if mean is not None else None,
                            tuple(float(s) for s in std) if std is not None else None, backend)


__all__ = [
    "BACKENDS", "JITTER_OPS", "LUMA_WEIGHTS", "RECIPES", "MultiViewAugment", "ViewConfig", "ViewGroup",
    "adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation", "apply_view",
    "augment_view", "build_augment", "channel_stats", "color_jitter", "gaussian_blur",
    "gaussian_kernels", "hflip", "jitter_active", "jitter_coefficients", "normalize", "resized_crop",
    "rgb_to_grayscale", "sample_crop_boxes", "sample_view_params", "solarize", "to_float_images", "use_native",
]
