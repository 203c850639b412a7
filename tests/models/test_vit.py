"""ViT encoder and I-JEPA predictor: subsets of patches, shapes, positional embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from collapselab._validation import InputError
from collapselab.data.masks import sample_block_masks, select_patches
from collapselab.models import (
    VisionTransformer,
    ViTPredictor,
    build_backbone,
    sincos_pos_embed_2d,
    vit_small,
    vit_tiny,
)


def small_vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    defaults = dict(img_size=8, patch_size=2, in_channels=1, embed_dim=32, depth=2, num_heads=4)
    defaults.update(kwargs)
    return VisionTransformer(**defaults).eval()


def test_vit_tiny_and_small_configs_have_published_widths_and_heads():
    tiny, small = vit_tiny(), vit_small()
    assert (tiny.out_dim, len(tiny.blocks), tiny.blocks[0].attn.num_heads) == (192, 12, 3)
    assert (small.out_dim, len(small.blocks), small.blocks[0].attn.num_heads) == (384, 12, 6)
    assert tiny.num_patches == 64 and tiny.grid == (8, 8)


def test_vit_backbone_features_are_batch_by_out_dim_on_cifar_and_digits():
    model = build_backbone("vit_tiny", depth=1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 192)
    digits = build_backbone("vit_tiny", img_size=8, patch_size=2, in_channels=1, depth=1)
    assert digits.num_patches == 16
    assert digits(torch.randn(2, 1, 8, 8)).shape == (2, 192)
    assert digits(torch.randn(2, 1, 8, 8), return_tokens=True).shape == (2, 16, 192)


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_keep_indices_equals_running_blocks_on_gathered_tokens(pos_embed):
    model = small_vit(pos_embed=pos_embed)
    x = torch.randn(3, 1, 8, 8)
    keep = torch.stack([torch.randperm(16)[:7] for _ in range(3)])
    with torch.no_grad():
        gathered = select_patches(model.patchify(x), keep[:, None])[:, 0]
        expected = model.forward_tokens(gathered)
        tokens = model(x, keep_indices=keep, return_tokens=True)
        pooled = model(x, keep_indices=keep)
    torch.testing.assert_close(tokens, expected)
    torch.testing.assert_close(pooled, expected.mean(1))


def test_keep_indices_with_all_patches_equals_full_forward():
    model = small_vit()
    x = torch.randn(2, 1, 8, 8)
    everything = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, keep_indices=everything), model(x))


def test_keep_indices_with_several_blocks_returns_one_result_per_block():
    model = small_vit()
    x = torch.randn(2, 1, 8, 8)
    keep = torch.stack([torch.stack([torch.randperm(16)[:5] for _ in range(3)]) for _ in range(2)])
    with torch.no_grad():
        out = model(x, keep_indices=keep, return_tokens=True)
        assert out.shape == (2, 3, 5, 32)
        torch.testing.assert_close(out[:, 1], model(x, keep_indices=keep[:, 1], return_tokens=True))


def test_predictor_returns_one_prediction_per_target_patch_in_encoder_width():
    encoder = small_vit(img_size=16)
    masks = sample_block_masks(2, encoder.grid, generator=torch.Generator().manual_seed(0))
    predictor = ViTPredictor(encoder.grid, encoder_dim=32, predictor_dim=16, depth=1, num_heads=2)
    x = torch.randn(2, 1, 16, 16)
    context = encoder(x, keep_indices=masks.context[:, 0], return_tokens=True)
    out = predictor(context, masks.context, masks.targets)
    assert out.shape == (*masks.targets.shape, 32)
    single = predictor(context, masks.context[:, 0], masks.targets[:, 2])
    torch.testing.assert_close(single, out[:, 2])


def test_predictor_output_depends_on_target_position():
    predictor = ViTPredictor(4, encoder_dim=8, predictor_dim=8, depth=1, num_heads=2).eval()
    context = torch.randn(1, 3, 8)
    ctx_idx = torch.tensor([[0, 1, 2]])
    a = predictor(context, ctx_idx, torch.tensor([[5]]))
    b = predictor(context, ctx_idx, torch.tensor([[10]]))
    assert not torch.allclose(a, b)


def test_sincos_table_is_fixed_distinct_per_patch_and_bounded():
    table = sincos_pos_embed_2d(16, (3, 4))
    assert table.shape == (12, 16)
    assert torch.unique(table, dim=0).shape[0] == 12
    assert bool((table.abs() <= 1).all())
    model = small_vit()
    assert not model.pos_embed.requires_grad
    assert small_vit(pos_embed="learned").pos_embed.requires_grad


def test_vit_refuses_wrong_image_size_and_out_of_range_indices():
    model = small_vit()
    with pytest.raises(InputError, match=r"multiples of the patch size 2 \(trained at 8x8\)"):
        model(torch.randn(2, 1, 7, 8))
    with pytest.raises(InputError, match="training size 8x8"):
        model(torch.randn(2, 1, 4, 4), keep_indices=torch.zeros((2, 3), dtype=torch.long))
    with pytest.raises(InputError, match=r"\[0, 16\)"):
        model(torch.randn(2, 1, 8, 8), keep_indices=torch.full((2, 3), 16))
    with pytest.raises(InputError, match="divisible"):
        VisionTransformer(img_size=10, patch_size=4)


def _redrawn(model: torch.nn.Module, shift: float) -> dict[str, torch.Tensor]:
    """``model``'s parameters after ``reset_parameters()`` under seed 1, its weights first moved by ``shift``."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(shift)
    torch.manual_seed(1)
    model.reset_parameters()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_vit_reset_parameters_redraws_every_parameter_the_constructor_sets(pos_embed):
    built = small_vit(pos_embed=pos_embed)
    moved, other = _redrawn(small_vit(pos_embed=pos_embed), 1.0), _redrawn(small_vit(pos_embed=pos_embed), -3.0)
    for name, p in built.named_parameters():
        assert torch.equal(moved[name], other[name]), name  # the seed decides everything: no value kept
        assert not torch.equal(moved[name], p + 1.0), name
    if pos_embed == "sincos":
        assert torch.equal(moved["pos_embed"][0], sincos_pos_embed_2d(32, (4, 4)))
    else:
        assert 0.01 < float(moved["pos_embed"].std()) < 0.03  # truncated normal, std 0.02
    assert float(moved["blocks.0.attn.qkv.weight"].std()) < 0.03  # the ViT's init, not nn.Linear's
    assert torch.equal(moved["norm.weight"], torch.ones(32)) and not moved["patch_embed.bias"].any()


def test_predictor_reset_parameters_redraws_the_mask_token():
    def predictor() -> ViTPredictor:
        return ViTPredictor(4, encoder_dim=8, predictor_dim=8, depth=1, num_heads=2)

    moved, other = _redrawn(predictor(), 1.0), _redrawn(predictor(), -3.0)
    assert all(torch.equal(moved[name], other[name]) for name in moved)
    assert 0 < float(moved["mask_token"].abs().max()) < 0.1


def test_vit_same_seed_gives_identical_outputs():
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(small_vit()(x), small_vit()(x))


def test_vit_and_predictor_run_under_bf16_autocast_and_backpropagate():
    encoder = small_vit().train()
    predictor = ViTPredictor(encoder.grid, encoder_dim=32, predictor_dim=16, depth=1, num_heads=2)
    x = torch.randn(2, 1, 8, 8)
    ctx = torch.arange(8).expand(2, 8)
    tgt = torch.arange(8, 12).expand(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = predictor(encoder(x, keep_indices=ctx, return_tokens=True), ctx, tgt)
    assert out.shape == (2, 4, 32)
    out.float().square().mean().backward()
    assert encoder.patch_embed.weight.grad is not None
    assert predictor.mask_token.grad is not None


def test_vit_other_image_sizes_use_the_positional_table_resized_bicubically():
    """Multi-crop local crops (DINO): a 4x4 input on an 8x8-trained ViT (patch 2) gets the 4x4
    positional grid that bicubic interpolation of the stored 4x4→2x2 table gives, checked against
    the patch embedding plus an independently resized table; the native size is unchanged."""
    model = small_vit()
    x = torch.randn(2, 1, 4, 4)
    table = model.pos_embed.detach().reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(table, size=(2, 2), mode="bicubic", align_corners=False)
    expected = model.patch_embed(x).flatten(2).transpose(1, 2) + resized.flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.patchify(x), expected)
    assert model.positions(model.grid) is model.pos_embed
    assert model(x).shape == (2, model.out_dim)
