"""I-JEPA block masks: block sizes, rectangles, no overlap, min_keep, seeding, bad settings."""

from __future__ import annotations

import math

import pytest
import torch

from collapselab._validation import InputError
from collapselab.data.masks import MaskConfig, block_size, sample_block_masks


def test_block_size_follows_keep_sqrt_formula():
    # 14x14 grid, 20 % at aspect 1: keep = int(196 * 0.2) = 39, side round(sqrt(39)) = 6
    assert block_size(0.2, 1.0, (14, 14)) == (6, 6)
    # aspect 1.5: h = round(sqrt(39 * 1.5)) = 8, w = round(sqrt(39 / 1.5)) = 5
    assert block_size(0.2, 1.5, (14, 14)) == (8, 5)
    # a full-area block is kept one patch below the grid side
    assert block_size(1.0, 1.0, (14, 14)) == (13, 13)


def _extent(mask_row, grid):
    idx = torch.nonzero(mask_row).squeeze(1)
    rows, cols = idx // grid[1], idx % grid[1]
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1), idx.numel()


def test_target_blocks_are_rectangles_of_the_configured_scale_and_aspect():
    cfg = MaskConfig()
    for seed in range(20):
        m = sample_block_masks(6, 14, cfg, torch.Generator().manual_seed(seed))
        h, w = m.target_size
        slack = (h + w) / 2 + 1  # rounding each side of a block of area int(scale * 196)
        assert 0.15 * 196 - slack <= h * w <= 0.2 * 196 + slack
        assert 0.75 * 0.5 <= h / w <= 1.5 * 2  # rounding of small blocks
        assert m.targets.shape == (6, 4, h * w)
        for b in range(6):
            for t in range(4):
                assert _extent(m.target_mask[b, t], (14, 14)) == (h, w, h * w)
        ch, cw = m.context_size
        assert ch == cw and 0.85 * 196 - (ch + 1) <= ch * cw <= 13 * 13  # sides stay below 14


def test_context_never_overlaps_targets_and_keeps_min_keep_patches():
    cfg = MaskConfig(min_keep=10)
    for seed in range(20):
        m = sample_block_masks(16, 14, cfg, torch.Generator().manual_seed(seed))
        union = m.target_mask.any(dim=1)
        assert not (m.context_mask[:, 0] & union).any()
        k = m.context.shape[-1]
        assert k >= 10 and (m.context_mask.sum(-1) == k).all()
        # indices and boolean masks agree
        assert torch.equal(torch.zeros_like(m.context_mask).scatter_(-1, m.context, True), m.context_mask)


def test_allow_overlap_keeps_the_whole_context_block():
    m = sample_block_masks(4, 14, MaskConfig(allow_overlap=True), torch.Generator().manual_seed(0))
    ch, cw = m.context_size
    assert m.context.shape[-1] == ch * cw


def test_same_seed_same_masks_and_samples_differ():
    a = sample_block_masks(8, 14, generator=torch.Generator().manual_seed(3))
    b = sample_block_masks(8, 14, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.targets, b.targets) and torch.equal(a.context, b.context)
    assert len({tuple(t.flatten().tolist()) for t in a.targets}) > 1


def test_impossible_settings_raise_clear_errors():
    with pytest.raises(InputError, match="min_keep"):
        sample_block_masks(4, 4, MaskConfig(min_keep=15, target_scale=(0.5, 0.5)),
                           torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="target_scale"):
        MaskConfig(target_scale=(0.3, 0.1))
    with pytest.raises(InputError, match="unknown key"):
        MaskConfig.from_dict({"pred_mask_scale": [0.1, 0.2]})
    assert MaskConfig.from_dict({"target_scale": [0.1, 0.2]}).target_scale == (0.1, 0.2)
    assert math.isclose(MaskConfig().context_scale[0], 0.85)


def test_select_patches_picks_the_indexed_tokens():
    from collapselab.data.masks import select_patches

    tokens = torch.arange(2 * 9 * 2, dtype=torch.float32).reshape(2, 9, 2)
    m = sample_block_masks(2, 3, MaskConfig(min_keep=1, num_targets=2, target_scale=(0.2, 0.3)),
                           torch.Generator().manual_seed(0))
    picked = select_patches(tokens, m.targets)
    for b in range(2):
        for j in range(2):
            assert torch.equal(picked[b, j], tokens[b, m.targets[b, j]])
    with pytest.raises(InputError, match="select_patches"):
        select_patches(tokens[0], m.targets)
