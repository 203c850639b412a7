"""Vision Transformer encoder and the I-JEPA predictor, sized for small images.

- :class:`VisionTransformer`: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021,
  with pre-norm blocks x + Attn(LN(x)), x + MLP(LN(x)) and a final LayerNorm; no class token
  (as the I-JEPA encoder); features are the mean of the output patch tokens. ``forward`` can run
  on a subset of patches (``keep_indices``), which is how the I-JEPA context encoder sees only the
  context block (Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding
  Predictive Architecture", CVPR 2023, Sec. 3; facebookresearch/ijepa ``src/models/
  vision_transformer.py``): positions are added *before* the patches are selected.
- :class:`ViTPredictor`: the I-JEPA narrow predictor: context tokens projected to the predictor
  width, plus one mask token per target position (a shared learned vector + that position's
  embedding), through transformer blocks; the outputs at the target positions are projected back
  to the encoder width.

Configs (``embed_dim``, ``depth``, ``num_heads``): tiny (192, 12, 3) and small (384, 12, 6), as
DeiT/timm ``vit_tiny`` / ``vit_small``; ``patch_size`` defaults to 4 (32×32 → 8×8 grid; use 2 for
8×8 digits). Init: truncated normal (std 0.02) for linear weights and the learned positional
embedding, zero biases, unit LayerNorms (timm / I-JEPA; I-JEPA's extra depth rescaling of the
output projections is not applied). Attention is ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from collapselab._validation import InputError

PosEmbed = Literal["sincos", "learned"]

VIT_CONFIGS: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
}


def sincos_pos_embed_2d(embed_dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine positional embedding, (H·W, embed_dim) in raster order.

    The first half of the channels encodes the row index, the second half the column index, each
    as [sin(pos·ω_k), cos(pos·ω_k)] with ω_k = 10000^(−k/(D/4)), k = 0 … D/4 − 1 (MAE, He et al.
    2022; used by I-JEPA). Requires ``embed_dim`` divisible by 4.
    """
    if embed_dim % 4 != 0:
        raise InputError(f"sincos_pos_embed_2d: embed_dim must be divisible by 4, got {embed_dim}")
    gh, gw = grid
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.to(torch.float64)[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows = torch.arange(gh).repeat_interleave(gw)
    cols = torch.arange(gw).repeat(gh)
    return torch.cat([one_axis(rows), one_axis(cols)], dim=1).to(torch.float32)


class Attention(nn.Module):
    """Multi-head self-attention with ``F.scaled_dot_product_attention``. (B, N, D) → (B, N, D)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise InputError(
                f"Attention: embed_dim {dim} must be divisible by num_heads {num_heads}"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = (
            self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (GELU, ratio 4)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _init_transformer(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _grid(img_size: int | tuple[int, int], patch_size: int, where: str) -> tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or any(int(s) < 1 for s in size) or int(patch_size) < 1:
        raise InputError(
            f"{where}: need positive img_size and patch_size, got {img_size}, {patch_size}"
        )
    if size[0] % patch_size or size[1] % patch_size:
        raise InputError(
            f"{where}: img_size {tuple(size)} must be divisible by patch_size {patch_size}"
        )
    return size[0] // patch_size, size[1] // patch_size


def _check_indices(
    indices: torch.Tensor, batch: int, num_patches: int, name: str, where: str, check_range: bool = True
) -> None:
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64:
        raise InputError(f"{where}: {name} must be an int64 tensor of patch indices")
    if indices.ndim not in (2, 3) or indices.shape[0] != batch:
        raise InputError(
            f"{where}: {name} must have shape (B, K) or (B, M, K) with B = {batch}, got "
            f"{tuple(indices.shape)}"
        )
    if (
        check_range
        and indices.device.type == "cpu"
        and indices.numel()
        and (int(indices.min()) < 0 or int(indices.max()) >= num_patches)
    ):
        raise InputError(
            f"{where}: {name} must lie in [0, {num_patches}) (raster order on the patch grid)"
        )


def _gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tokens (B, P, D), indices (B, K) → (B, K, D)."""
    return tokens.gather(1, indices[..., None].expand(-1, -1, tokens.shape[-1]))


class VisionTransformer(nn.Module):
    """ViT encoder without class token; features = mean of the output patch tokens.

    Args:
        img_size: input side (or (H, W)); fixed, since the positional table is fixed.
        patch_size: side of the square patches (4 for 32×32, 2 for 8×8).
        in_channels: image channels.
        embed_dim, depth, num_heads, mlp_ratio: transformer size (see ``VIT_CONFIGS``).
        pos_embed: ``"sincos"`` (fixed 2-D sine-cosine, I-JEPA/MAE) or ``"learned"``.

    ``out_dim = embed_dim``, ``num_patches = (H/p)·(W/p)``, ``grid = (H/p, W/p)``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        pos_embed: PosEmbed = "sincos",
    ) -> None:
        super().__init__()
        where = "VisionTransformer"
        self.grid = _grid(img_size, patch_size, where)
        if pos_embed not in ("sincos", "learned"):
            raise InputError(f"{where}: pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        if depth < 1 or embed_dim < 1 or in_channels < 1:
            raise InputError(f"{where}: depth, embed_dim and in_channels must be positive")
        self.patch_size, self.in_channels = patch_size, in_channels
        self.num_patches = self.grid[0] * self.grid[1]
        self.out_dim: int = embed_dim
        self.embed_dim = embed_dim
        self.pos_embed_type: PosEmbed = pos_embed
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches, embed_dim), requires_grad=pos_embed == "learned"
        )
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every parameter as the constructor does (module doc): truncated normal
        (std 0.02) for the linear layers, the patch embedding and a learned position table, the
        sine-cosine table recomputed, zero biases, unit LayerNorms. Draws from the global RNG."""
        _init_transformer(self)
        with torch.no_grad():
            learned = self.pos_embed.requires_grad  # also for a module pickled before pos_embed_type
            if getattr(self, "pos_embed_type", "learned" if learned else "sincos") == "learned":
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
            else:
                self.pos_embed.copy_(sincos_pos_embed_2d(self.embed_dim, self.grid)[None])
        nn.init.trunc_normal_(self.patch_embed.weight, std=0.02)
        nn.init.zeros_(self.patch_embed.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) → patch tokens plus positions, (B, (H/p)·(W/p), embed_dim).

        Images of another size than ``img_size`` (sides a multiple of the patch size, e.g. the
        local crops of multi-crop) get the positional table resized to their grid by bicubic
        interpolation, as DINO's ``interpolate_pos_encoding`` (Caron et al. 2021, official
        code): a smaller crop spans the same range of positions as a full image.
        """
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % p or x.shape[3] % p or x.shape[2] < p \
                or x.shape[3] < p:
            h, w = self.grid[0] * p, self.grid[1] * p
            raise InputError(
                f"VisionTransformer: expected images of shape (B, {self.in_channels}, H, W) with H and W "
                f"multiples of the patch size {p} (trained at {h}x{w}), got {tuple(x.shape)}"
            )
        return self.patch_embed(x).flatten(2).transpose(1, 2) + self.positions((x.shape[2] // p, x.shape[3] // p))

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """The positional table (1, grid_h·grid_w, D): the stored one at the training grid, else
        that table bicubically interpolated to ``grid``."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        table = self.pos_embed.reshape(1, self.grid[0], self.grid[1], self.embed_dim).permute(0, 3, 1, 2)
        table = F.interpolate(table.float(), size=tuple(grid), mode="bicubic", align_corners=False)
        return table.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], self.embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        keep_indices: torch.Tensor | None = None,
        return_tokens: bool = False,
        check_range: bool = True,
    ) -> torch.Tensor:
        """Encode images, optionally on a subset of patches.

        Args:
            x: images (B, C, H, W).
            keep_indices: int64 patch indices (raster order) to keep, (B, K) or (B, M, K) for
                M blocks per image (e.g. ``BlockMasks.context`` of ``collapselab.data.masks``);
                ``None`` keeps every patch. Positions are added before selection, so running on
                a subset equals running on the gathered tokens.
            return_tokens: return the normalised tokens instead of their mean.
            check_range: check that CPU indices lie on the grid (reads their values on the host;
                a training step with indices drawn in range passes False).

        Returns: tokens (B, K, D) / (B, M, K, D) if ``return_tokens``, else features (B, D) /
        (B, M, D) — the mean of the kept tokens.
        """
        tokens = self.patchify(x)
        lead: tuple[int, ...] = (x.shape[0],)
        if keep_indices is not None:
            if tokens.shape[1] != self.num_patches:
                raise InputError("VisionTransformer: keep_indices need images of the training size "
                                 f"{self.grid[0] * self.patch_size}x{self.grid[1] * self.patch_size}")
            _check_indices(keep_indices, x.shape[0], self.num_patches, "keep_indices", "VisionTransformer",
                           check_range)
            lead = tuple(keep_indices.shape[:-1])
            flat = keep_indices.reshape(x.shape[0], -1)
            tokens = _gather_tokens(tokens, flat).reshape(
                -1, keep_indices.shape[-1], self.embed_dim
            )
        tokens = self.forward_tokens(tokens)
        if return_tokens:
            return tokens.reshape(*lead, tokens.shape[1], self.embed_dim)
        return tokens.mean(dim=1).reshape(*lead, self.embed_dim)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Transformer blocks + final LayerNorm on embedded tokens (B, K, D) → (B, K, D)."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


def vit_tiny(
    img_size: int | tuple[int, int] = 32,
    patch_size: int = 4,
    in_channels: int = 3,
    pos_embed: PosEmbed = "sincos",
    depth: int = 12,
) -> VisionTransformer:
    """ViT-Tiny: width 192, 3 heads, 12 blocks (Touvron et al. 2021, DeiT-Ti). (B, C, H, W) → (B, 192)."""
    return VisionTransformer(img_size, patch_size, in_channels, 192, depth, 3, 4.0, pos_embed)


def vit_small(
    img_size: int | tuple[int, int] = 32,
    patch_size: int = 4,
    in_channels: int = 3,
    pos_embed: PosEmbed = "sincos",
    depth: int = 12,
) -> VisionTransformer:
    """ViT-Small: width 384, 6 heads, 12 blocks (DeiT-S). (B, C, H, W) → (B, 384)."""
    return VisionTransformer(img_size, patch_size, in_channels, 384, depth, 6, 4.0, pos_embed)


class ViTPredictor(nn.Module):
    """I-JEPA predictor g_φ(s_c, pos_k): predicts target-patch representations from context tokens.

    context (B, K_c, D_enc) → Linear → + pos[context_indices]; for each target block m, K_t mask
    tokens = mask_token + pos[target_indices[:, m]]; [context ‖ mask tokens] → blocks → LN →
    Linear(D_pred → D_enc) at the mask positions. As the official code, the context is repeated
    once per target block (a batch of B·M sequences), so blocks do not see each other.

    Args:
        num_patches / grid: the encoder's patch grid (positions use a fixed 2-D sincos table).
        encoder_dim: D_enc. predictor_dim, depth, num_heads: predictor size (I-JEPA uses a
            narrow predictor, width 384 and depth 12 for ViT-H; the defaults here are small).
    """

    def __init__(
        self,
        grid: int | tuple[int, int],
        encoder_dim: int = 192,
        predictor_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.grid = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
        if min(self.grid) < 1 or depth < 1:
            raise InputError(f"ViTPredictor: need a positive grid and depth, got {grid}, {depth}")
        self.num_patches = self.grid[0] * self.grid[1]
        self.encoder_dim, self.predictor_dim = encoder_dim, predictor_dim
        self.out_dim: int = encoder_dim
        self.embed = nn.Linear(encoder_dim, predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(predictor_dim, self.grid), persistent=False
        )
        self.blocks = nn.ModuleList(
            Block(predictor_dim, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(predictor_dim, eps=1e-6)
        self.proj = nn.Linear(predictor_dim, encoder_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every parameter as the constructor does: truncated normal (std 0.02) for
        the linear layers and the mask token, zero biases, unit LayerNorms (global RNG)."""
        _init_transformer(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self,
        context: torch.Tensor,
        context_indices: torch.Tensor,
        target_indices: torch.Tensor,
        check_range: bool = True,
    ) -> torch.Tensor:
        """Predict the encoder's tokens at the target positions.

        Args:
            context: context-encoder tokens (B, K_c, D_enc).
            context_indices: their patch indices, int64 (B, K_c) (or (B, 1, K_c)).
            target_indices: int64 (B, K_t) or (B, M, K_t) (e.g. ``BlockMasks.targets``).
            check_range: check that CPU indices lie on the grid (a host read; see
                :meth:`VisionTransformer.forward`).

        Returns: predictions (B, K_t, D_enc), or (B, M, K_t, D_enc) for 3-D target_indices.
        """
        where = "ViTPredictor"
        if context.ndim != 3 or context.shape[-1] != self.encoder_dim:
            raise InputError(
                f"{where}: context must be (B, K_c, {self.encoder_dim}), got {tuple(context.shape)}"
            )
        b, k_c, _ = context.shape
        _check_indices(context_indices, b, self.num_patches, "context_indices", where, check_range)
        _check_indices(target_indices, b, self.num_patches, "target_indices", where, check_range)
        context_indices = context_indices.reshape(b, -1)
        if context_indices.shape[1] != k_c:
            raise InputError(
                f"{where}: context_indices name {context_indices.shape[1]} patches for {k_c} context tokens"
            )
        blocks_3d = target_indices.ndim == 3
        targets = target_indices if blocks_3d else target_indices[:, None]
        m, k_t = targets.shape[1], targets.shape[2]
        pos = self.pos_embed.to(context.dtype)
        ctx = self.embed(context) + pos[context_indices]  # (B, K_c, Dp)
        masks = self.mask_token + pos[targets]  # (B, M, K_t, Dp)
        ctx = ctx.repeat_interleave(m, dim=0)  # (B·M, K_c, Dp)
        tokens = torch.cat([ctx, masks.reshape(b * m, k_t, -1)], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        out = self.proj(self.norm(tokens[:, k_c:]))  # (B·M, K_t, D_enc)
        out = out.reshape(b, m, k_t, self.encoder_dim)
        return out if blocks_3d else out[:, 0]


__all__ = [
    "VIT_CONFIGS",
    "Attention",
    "Block",
    "ViTPredictor",
    "VisionTransformer",
    "sincos_pos_embed_2d",
    "vit_small",
    "vit_tiny",
]
