"""A fixed Rademacher code dictionary W ∈ {−1, +1}^{f×c} stored as packed bits.

FALCON / CPLearn (Sansone, Lebailly & Tuytelaars, ICML 2025) projects h ∈ R^f onto c fixed ±1
code words. The official recipe uses f = 2,048 and c = 16,384; c = 65,536 would take 512 MiB as
a float32 matrix (and as much again for the copy autograd saves). Here W lives as one bit per
entry (f·c/8 bytes: 16 MiB at 2,048 × 65,536) and h W is computed over blocks of ``chunk``
codes, unpacking one f × chunk block at a time, in the forward and again in the backward pass
(∂L/∂h = ∂L/∂(hW) · Wᵀ needs only W, which is never trained). Peak extra memory is one block.
"""

from __future__ import annotations

import torch
from torch import nn

from collapselab._validation import InputError

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def pack_signs(signs: torch.Tensor) -> torch.Tensor:
    """(f, c) ±1 → (f, ⌈c/8⌉) uint8, bit k of byte j = [W[:, 8j + k] = +1]."""
    bits = (signs > 0).to(torch.uint8)
    f, c = bits.shape
    pad = (-c) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(f, pad)], dim=1)
    shifts = _SHIFTS.to(bits.device)
    return (bits.view(f, -1, 8) << shifts).sum(dim=2, dtype=torch.uint8)


def unpack_signs(packed: torch.Tensor, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
    """Columns ``start:stop`` of the ±1 matrix held in ``packed`` (``start`` a multiple of 8)."""
    block = packed[:, start // 8 : (stop + 7) // 8]
    bits = (block.unsqueeze(2) >> _SHIFTS.to(packed.device)) & 1
    bits = bits.reshape(packed.shape[0], -1)[:, : stop - start]
    return bits.to(dtype) * 2 - 1


class _SignMatmul(torch.autograd.Function):
    """h W over blocks of codes; saves nothing but the packed bits."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, packed: torch.Tensor, c: int, chunk: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(packed)
        ctx.c, ctx.chunk = c, chunk
        return torch.cat(
            [h @ unpack_signs(packed, s, min(s + chunk, c), h.dtype) for s in range(0, c, chunk)], dim=1
        )

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (packed,) = ctx.saved_tensors
        c, chunk = ctx.c, ctx.chunk
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_h = sum(
                grad[:, s : min(s + chunk, c)] @ unpack_signs(packed, s, min(s + chunk, c), grad.dtype).T
                for s in range(0, c, chunk)
            )
        return grad_h, None, None, None


class RademacherDictionary(nn.Module):
    """Fixed W ∈ {−1, +1}^{f×c}, entries ±1 with probability ½, drawn from ``generator`` (seeded)
    ``chunk`` columns at a time; kept as a packed-bit buffer (saved in checkpoints, never trained).

    ``forward(h)`` returns h W, shape (n, f) → (n, c), computed blockwise (see module docstring).
    ``dense()`` materialises W (for tests and small c).
    """

    packed: torch.Tensor

    def __init__(self, f: int, c: int, generator: torch.Generator | None = None, chunk: int = 4096) -> None:
        super().__init__()
        if f < 1 or c < 2:
            raise InputError(f"RademacherDictionary: need f >= 1 and c >= 2, got f={f}, c={c}")
        if chunk < 8 or chunk % 8:
            raise InputError(f"RademacherDictionary: chunk must be a positive multiple of 8, got {chunk}")
        self.f, self.c, self.chunk = f, c, chunk
        blocks = []
        for start in range(0, c, chunk):
            width = min(chunk, c - start)
            blocks.append(pack_signs(2 * torch.randint(0, 2, (f, width), generator=generator) - 1))
        self.register_buffer("packed", torch.cat(blocks, dim=1))

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.cat(
            [unpack_signs(self.packed, s, min(s + self.chunk, self.c), dtype) for s in range(0, self.c, self.chunk)],
            dim=1,
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim != 2 or h.shape[1] != self.f:
            raise InputError(f"RademacherDictionary: expected h of shape (n, {self.f}), got {tuple(h.shape)}")
        return _SignMatmul.apply(h, self.packed, self.c, self.chunk)

    def extra_repr(self) -> str:
        return f"f={self.f}, c={self.c}, chunk={self.chunk}, {self.packed.numel() / 2**20:.1f} MiB packed"
