"""Batched augmentations against independent references, seeding, parameter statistics."""

from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import scipy.stats
import torch
import torch.nn.functional as F
import yaml

from collapselab._validation import InputError
from collapselab.data import augment as A
from collapselab.data.augment import ViewConfig, build_augment


def rand_images(b=6, c=3, h=12, w=10, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


# --- each op against an independent reference -----------------------------------------------------

def test_hflip_mirrors_exactly_the_selected_images():
    x = rand_images()
    mask = torch.tensor([True, False, True, False, False, True])
    out = A.hflip(x, mask)
    for i in range(6):
        expected = x[i].numpy()[:, :, ::-1] if mask[i] else x[i].numpy()
        assert np.array_equal(out[i].numpy(), expected)


def test_full_box_crop_with_flip_is_an_exact_mirror():
    x = rand_images()
    boxes = torch.tensor([[0, 0, 12, 10]] * 6)
    flip = torch.tensor([True, False] * 3)
    out = A.resized_crop(x, boxes, (12, 10), flip=flip)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


@pytest.mark.parametrize("size", [(12, 10), (5, 7), (20, 17)])
def test_crop_with_fixed_box_equals_slicing_then_bilinear_interpolate(size):
    x = rand_images(b=16)
    boxes = A.sample_crop_boxes(16, 12, 10, generator=torch.Generator().manual_seed(1))
    out = A.resized_crop(x, boxes, size)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = F.interpolate(x[i:i + 1, :, top:top + h, left:left + w], size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[i:i + 1], ref, atol=2e-6, rtol=0)


def test_crop_boxes_fall_back_to_a_central_crop_when_no_attempt_fits():
    boxes = A.sample_crop_boxes(4, 10, 10, scale=(1.0, 1.0), ratio=(2.0, 2.0),
                                generator=torch.Generator().manual_seed(0))
    # aspect 2 at full area never fits a square: central crop, width 10, height round(10 / 2)
    assert boxes.tolist() == [[2, 0, 5, 10]] * 4


def test_grayscale_uses_itu_601_luma_weights():
    x = rand_images()
    r, g, b = (x[:, i].double().numpy() for i in range(3))
    expected = 0.299 * r + 0.587 * g + 0.114 * b
    np.testing.assert_allclose(A.rgb_to_grayscale(x)[:, 0].numpy(), expected, atol=1e-6)


def test_brightness_contrast_saturation_match_their_formulas():
    x = rand_images()
    f = torch.tensor([0.5, 1.0, 1.3, 0.0, 2.0, 0.8])
    xn, fn = x.double().numpy(), f.double().numpy()[:, None, None, None]
    gray = (0.299 * xn[:, 0] + 0.587 * xn[:, 1] + 0.114 * xn[:, 2])[:, None]
    np.testing.assert_allclose(A.adjust_brightness(x, f).numpy(), np.clip(fn * xn, 0, 1), atol=1e-6)
    mean = gray.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(A.adjust_contrast(x, f).numpy(), np.clip(fn * xn + (1 - fn) * mean, 0, 1), atol=1e-6)
    np.testing.assert_allclose(A.adjust_saturation(x, f).numpy(), np.clip(fn * xn + (1 - fn) * gray, 0, 1), atol=1e-6)


def test_hue_shift_matches_colorsys_hsv_rotation():
    x = rand_images(b=3, h=4, w=5)
    shift = torch.tensor([0.07, -0.25, 0.5])
    out = A.adjust_hue(x, shift).numpy()
    for b in range(3):
        for i in range(4):
            for j in range(5):
                h, s, v = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
                expected = colorsys.hsv_to_rgb((h + float(shift[b])) % 1.0, s, v)
                np.testing.assert_allclose(out[b, :, i, j], expected, atol=2e-6)


def test_hue_rotation_by_zero_is_identity_and_by_one_turn_returns_the_input():
    x = rand_images()
    x[0] = 0.5  # gray image: hue undefined, must stay
    torch.testing.assert_close(A.adjust_hue(x, torch.zeros(6)), x, atol=2e-6, rtol=0)
    torch.testing.assert_close(A.adjust_hue(x, torch.ones(6)), x, atol=2e-6, rtol=0)
    torch.testing.assert_close(A.adjust_hue(x, -torch.ones(6)), x, atol=2e-6, rtol=0)
    assert not torch.allclose(A.adjust_hue(x, torch.full((6,), 0.5)), x, atol=1e-2)


def test_solarize_inverts_exactly_the_pixels_at_or_above_threshold():
    x = torch.tensor([0.0, 0.25, 0.4999, 0.5, 0.75, 1.0]).reshape(1, 1, 1, 6).repeat(2, 3, 1, 1)
    out = A.solarize(x, torch.tensor([True, False]), threshold=0.5)
    assert out[0, 0, 0].tolist() == [0.0, 0.25, pytest.approx(0.4999), 0.5, 0.25, 0.0]
    assert torch.equal(out[1], x[1])


def test_gaussian_kernel_matches_scipy_window_and_sums_to_one():
    sigma = torch.tensor([0.5, 1.0, 2.0])
    k = A.gaussian_kernels(sigma, 7)
    for i, s in enumerate(sigma.tolist()):
        w = scipy.signal.windows.gaussian(7, s)
        np.testing.assert_allclose(k[i].numpy(), w / w.sum(), atol=1e-6)


def test_blur_equals_separable_correlation_with_mirror_padding():
    x = rand_images(b=2)
    sigma = torch.tensor([0.7, 1.6])
    out = A.gaussian_blur(x, sigma, 5)
    for i, s in enumerate(sigma.tolist()):
        w = scipy.signal.windows.gaussian(5, s)
        w = w / w.sum()
        ref = scipy.ndimage.correlate1d(x[i].double().numpy(), w, axis=-1, mode="mirror")
        ref = scipy.ndimage.correlate1d(ref, w, axis=-2, mode="mirror")
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-6)


def test_blur_with_sigma_to_zero_is_identity():
    x = rand_images()
    assert torch.equal(A.gaussian_blur(x, torch.full((6,), 1e-4), 5), x)


def test_blur_preserves_the_mean_of_an_image_with_a_border():
    x = torch.zeros(3, 3, 16, 16)
    x[:, :, 4:12, 4:12] = rand_images(b=3, h=8, w=8)
    out = A.gaussian_blur(x, torch.tensor([0.5, 1.0, 2.0]), 7)  # radius 3 < border 4
    torch.testing.assert_close(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-6, rtol=0)
    assert not torch.allclose(out, x)


def test_normalize_is_per_channel_affine():
    x = rand_images()
    out = A.normalize(x, [0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    torch.testing.assert_close(out[:, 1], (x[:, 1] - 0.2) / 0.25)


# --- pipeline: seeding and per-sample randomness ----------------------------------------------------

@pytest.mark.parametrize("recipe", ["simclr", "byol", "multicrop"])
def test_same_seed_gives_identical_views_and_another_seed_different_ones(recipe):
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = build_augment(recipe)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert len(a) == aug.num_views and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_each_sample_of_a_batch_gets_its_own_parameters():
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(32, 3, 16, 16)
    view = build_augment("simclr")(x, torch.Generator().manual_seed(0))[0]
    flat = view.reshape(32, -1)
    assert torch.cdist(flat, flat).add(torch.eye(32)).min() > 0  # no two samples identical
    p = A.sample_view_params(32, 16, 16, ViewConfig(), torch.Generator().manual_seed(0))
    assert len(set(map(tuple, p["boxes"].tolist()))) > 16
    assert p["brightness"].unique().numel() == 32


def test_parameter_histograms_match_the_configured_ranges():
    cfg = ViewConfig(brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1, flip_p=0.5, jitter_p=0.8,
                     grayscale_p=0.2, blur_p=0.5, solarize_p=0.2, blur_sigma=(0.1, 2.0))
    n = 20000
    p = A.sample_view_params(n, 32, 32, cfg, torch.Generator().manual_seed(123))
    for key, (lo, hi) in {"brightness": (0.6, 1.4), "contrast": (0.7, 1.3), "saturation": (0.8, 1.2),
                          "hue": (-0.1, 0.1), "sigma": (0.1, 2.0)}.items():
        v = p[key].double().numpy()
        assert lo <= v.min() and v.max() <= hi
        assert scipy.stats.kstest(v, "uniform", args=(lo, hi - lo)).pvalue > 1e-3, key
    for key, prob in {"flip": 0.5, "jitter": 0.8, "grayscale": 0.2, "blur": 0.5, "solarize": 0.2}.items():
        rate = p[key].double().mean().item()
        assert abs(rate - prob) < 4 * (prob * (1 - prob) / n) ** 0.5, key
    perms = {tuple(r) for r in p["order"].tolist()}
    assert perms == set(itertools.permutations(range(4)))
    counts = np.unique(p["order"].numpy() @ np.array([64, 16, 4, 1]), return_counts=True)[1]
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    top, left, h, w = p["boxes"].T.double()
    area = h * w / (32 * 32)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 3 / 4 - 0.1 and ratio.max() <= 4 / 3 + 0.15


def test_fixed_jitter_order_applies_brightness_contrast_saturation_hue():
    x = rand_images()
    cfg = ViewConfig(jitter_p=1.0, jitter_order="fixed")
    p = A.sample_view_params(6, 12, 10, cfg, torch.Generator().manual_seed(0))
    got = A.color_jitter(x, p, cfg)
    expected = A.adjust_hue(A.adjust_saturation(A.adjust_contrast(A.adjust_brightness(
        x, p["brightness"]), p["contrast"]), p["saturation"]), p["hue"])
    torch.testing.assert_close(got, expected)


def test_random_jitter_order_applies_each_images_own_permutation():
    x = rand_images(b=24)
    cfg = ViewConfig(jitter_p=1.0)
    p = A.sample_view_params(24, 12, 10, cfg, torch.Generator().manual_seed(3))
    got = A.color_jitter(x, p, cfg)
    ops = [A.adjust_brightness, A.adjust_contrast, A.adjust_saturation, A.adjust_hue]
    for i in range(24):
        y = x[i:i + 1]
        for k in p["order"][i].tolist():
            y = ops[k](y, p[A.JITTER_OPS[k]][i:i + 1])
        torch.testing.assert_close(got[i:i + 1], y)


def test_images_without_jitter_are_untouched_by_color_jitter():
    x = rand_images()
    cfg = ViewConfig(jitter_p=0.5)
    p = A.sample_view_params(6, 12, 10, cfg, torch.Generator().manual_seed(1))
    got = A.color_jitter(x, p, cfg)
    off = ~p["jitter"]
    assert off.any() and torch.equal(got[off], x[off])


# --- recipes and configuration --------------------------------------------------------------------

def test_byol_recipe_is_asymmetric_in_blur_and_solarize():
    aug = build_augment("byol")
    v1, v2 = (g.config for g in aug.groups)
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert (v1.brightness, v1.contrast, v1.saturation, v1.hue) == (0.4, 0.4, 0.2, 0.1)


def test_multicrop_makes_two_global_and_six_local_views():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    views = build_augment("multicrop")(x, torch.Generator().manual_seed(0))
    assert [tuple(v.shape[-2:]) for v in views] == [(32, 32)] * 2 + [(14, 14)] * 6


def test_recipe_from_yaml_dict_overrides_groups_and_normalises():
    cfg = yaml.safe_load("""
        recipe: byol
        size: 8
        mean: [0.5, 0.5, 0.5]
        std: [0.25, 0.25, 0.25]
        views:
          view2: {solarize_p: 1.0, crop_scale: [0.5, 1.0]}
    """)
    aug = build_augment(cfg)
    assert aug.groups[1].config.solarize_p == 1.0 and aug.groups[1].config.crop_scale == (0.5, 1.0)
    views = aug(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert views[0].shape == (4, 3, 8, 8)
    assert views[0].min() >= -2.0 - 1e-6 and views[0].max() <= 2.0 + 1e-6


def test_grayscale_images_pass_through_every_recipe():
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    for recipe in ("simclr", "byol", "multicrop"):
        views = build_augment(recipe)(x, torch.Generator().manual_seed(0))
        assert all(v.shape[:2] == (5, 1) and torch.isfinite(v).all() for v in views)


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("images", "match"), [
    (torch.zeros(2, 3, 8, 8, dtype=torch.int64), "uint8"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), "batch axis"),
    (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "channels-last"),
    ([[[[0]]]], "torch.Tensor"),
])
def test_bad_images_raise_clear_errors(images, match):
    with pytest.raises(InputError, match=match):
        build_augment("simclr")(images)


def test_numpy_batches_are_accepted_at_the_edge():
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    views = build_augment("simclr")(x, torch.Generator().manual_seed(0))
    assert all(isinstance(v, torch.Tensor) and v.shape == (2, 3, 8, 8) for v in views)


def test_unknown_config_key_suggests_the_closest():
    with pytest.raises(InputError, match="did you mean 'blur_p'"):
        build_augment({"recipe": "byol", "views": {"view1": {"blur_prob": 0.5}}})
    with pytest.raises(InputError, match="did you mean 'byol'"):
        build_augment("boyl")


@pytest.mark.parametrize("bad", [{"flip_p": 1.5}, {"hue": 0.7}, {"crop_scale": (0.5, 1.5)},
                                 {"blur_kernel": 4}, {"jitter_order": "shuffled"}])
def test_out_of_range_settings_are_refused(bad):
    with pytest.raises(InputError):
        build_augment("simclr", **bad)


def test_channel_stats_match_numpy_mean_and_std():
    x = torch.randint(0, 256, (50, 3, 4, 5), dtype=torch.uint8)
    mean, std = A.channel_stats(x, chunk=7)
    arr = x.double().numpy() / 255
    np.testing.assert_allclose(mean, arr.mean(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(std, arr.std(axis=(0, 2, 3)), atol=1e-9)


def test_recipe_accepts_an_omegaconf_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"recipe": "byol", "views": {"view2": {"crop_scale": [0.5, 1.0]}}})
    aug = build_augment(cfg)
    assert aug.groups[1].config.crop_scale == (0.5, 1.0)
    assert aug.groups[1].config == ViewConfig(saturation=0.2, blur_p=0.1, solarize_p=0.2, crop_scale=(0.5, 1.0))


# --- batched fast paths against the per-image formulas ------------------------------------------------

def test_hue_shift_of_several_turns_matches_colorsys():
    x = rand_images(b=4, h=3, w=4, seed=5)
    shift = torch.tensor([2.3, -3.7, 1.5, -0.999])
    out = A.adjust_hue(x, shift).numpy()
    for b in range(4):
        for i in range(3):
            for j in range(4):
                h, s, v = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
                expected = colorsys.hsv_to_rgb((h + float(shift[b])) % 1.0, s, v)
                np.testing.assert_allclose(out[b, :, i, j], expected, atol=2e-6)


def test_hue_of_a_batch_larger_than_the_cache_block_equals_per_image_hue():
    b = A._CACHE_BLOCK_ELEMENTS // (3 * 4 * 4) + 5  # spans two slices of the batch
    x = rand_images(b=b, h=4, w=4, seed=2)
    shift = torch.rand(b, generator=torch.Generator().manual_seed(3)) - 0.5
    out = A.adjust_hue(x, shift)
    for i in (0, b // 2, b - 1):
        torch.testing.assert_close(out[i:i + 1], A.adjust_hue(x[i:i + 1], shift[i:i + 1]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("strengths", [(0.4, 0.4, 0.4, 0.1), (0.8, 0.0, 0.5, 0.0), (0.0, 0.0, 0.0, 0.3)])
def test_fused_jitter_equals_the_sequential_reference_per_image(channels, strengths):
    x = rand_images(b=40, c=channels, seed=4)
    b, c, s, h = strengths
    cfg = ViewConfig(brightness=b, contrast=c, saturation=s, hue=h, jitter_p=0.7)
    p = A.sample_view_params(40, 12, 10, cfg, torch.Generator().manual_seed(9))
    got = A.color_jitter(x, p, cfg)
    ops = [A.adjust_brightness, A.adjust_contrast, A.adjust_saturation, A.adjust_hue]
    for i in range(40):
        y = x[i:i + 1]
        if p["jitter"][i]:
            for k in p["order"][i].tolist():
                if float(strengths[k]) > 0:
                    y = ops[k](y, p[A.JITTER_OPS[k]][i:i + 1])
        torch.testing.assert_close(got[i:i + 1], y, atol=1e-5, rtol=0)


def test_grayscale_in_a_view_replaces_exactly_the_selected_images_by_their_luma():
    x = rand_images(b=16, seed=6)
    cfg = ViewConfig(grayscale_p=0.5, jitter_p=0.0, flip_p=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.2, 1.2))
    p = A.sample_view_params(16, 12, 10, cfg, torch.Generator().manual_seed(1))
    out = A.apply_view(x, p, cfg)
    plain = A.resized_crop(x, p["boxes"], (12, 10), flip=p["flip"])
    g = p["grayscale"]
    assert g.any() and (~g).any()
    assert torch.equal(out[~g], plain[~g])
    assert torch.equal(out[g], A.rgb_to_grayscale(plain[g]).expand(-1, 3, -1, -1))


# --- sync-free (dense) path: same views as the CPU path, no host synchronisation ----------------------

_SYNC_OPS = ("nonzero", "argwhere", "_local_scalar_dense", "masked_select", "bincount", "_unique2",
             "unique_dim", "unique_consecutive", "equal", "is_nonzero", "repeat_interleave")
_INDEX_OPS = ("index", "index_put", "index_put_", "_index_put_impl_")


class _HostSyncError(AssertionError):
    pass


class _NoHostSync(torch.utils._python_dispatch.TorchDispatchMode):
    """Raises on every aten op that reads device data back to the host (on a GPU: a sync)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _SYNC_OPS:
            raise _HostSyncError(f"host synchronisation: aten.{name}")
        if name in _INDEX_OPS and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                      for i in (args[1] if len(args) > 1 else ()) or ()):
            raise _HostSyncError(f"host synchronisation: aten.{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


class no_host_sync:
    """Context: any host read of a tensor's value (or a tensor built from host data, which on a
    GPU is a synchronising host→device copy) raises :class:`_HostSyncError`."""

    def __enter__(self):
        def refuse(what):
            def fail(*args, **kwargs):
                raise _HostSyncError(f"host synchronisation: {what}")
            return fail

        self._patch = pytest.MonkeyPatch()
        for attr in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "nonzero"):
            self._patch.setattr(torch.Tensor, attr, refuse(f"Tensor.{attr}"))
        for attr in ("nonzero", "argwhere", "bincount", "tensor", "as_tensor", "from_numpy"):
            self._patch.setattr(torch, attr, refuse(f"torch.{attr}"))
        self._mode = _NoHostSync()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self._patch.undo()
        return False


def _views(aug, x, seed, dense):
    """The recipe's views from ``seed``, on the dense path (under no_host_sync) or the CPU one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(A, "_FORCE_SYNC_FREE", dense)
        if not dense:
            return aug(x, torch.Generator().manual_seed(seed))
        with no_host_sync():
            return aug(x, torch.Generator().manual_seed(seed))


def test_the_sync_guard_catches_the_cpu_path():
    x = rand_images(b=16, seed=1)
    cfg = ViewConfig(grayscale_p=0.5, blur_p=0.5)
    p = A.sample_view_params(16, 12, 10, cfg, torch.Generator().manual_seed(0))
    with no_host_sync(), pytest.raises(_HostSyncError):
        A.apply_view(x, p, cfg, sync_free=False)
    with no_host_sync(), pytest.raises(_HostSyncError):
        A.color_jitter(x, p, cfg, sync_free=False)
    with no_host_sync(), pytest.raises(_HostSyncError):
        x[x[:, 0, 0, 0] > 0.5]  # boolean-mask indexing: a nonzero inside
    with no_host_sync(), pytest.raises(_HostSyncError):
        A.apply_view(x, p, ViewConfig(grayscale_p=0.0, jitter_p=0.0), mean=[0.5] * 3, std=[0.2] * 3,
                     sync_free=False)  # normalisation constants made from host data


def test_sync_free_path_is_chosen_off_the_cpu_or_when_forced(monkeypatch):
    x = torch.zeros(2, 3, 4, 4)
    assert not A._sync_free(x) and A._sync_free(x, True) and not A._sync_free(x, False)
    assert A._sync_free(torch.zeros(2, 3, 4, 4, device="meta"))
    monkeypatch.setattr(A, "_FORCE_SYNC_FREE", True)
    assert A._sync_free(x) and not A._sync_free(x, False)
    assert A._batch_slices(torch.zeros(10**4, 3, 4, 4)) == [slice(0, 10**4)]  # hue in one slice


@pytest.mark.parametrize("recipe", ["simclr", "byol", "multicrop"])
def test_dense_path_makes_the_views_without_host_synchronisation(recipe):
    x = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = build_augment(recipe, backend="torch", mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    views = _views(aug, x, 3, dense=True)
    assert len(views) == aug.num_views and all(torch.isfinite(v).all() for v in views)


def test_affine_jitter_identity_coefficients_are_exact():
    for c in (1, 3):
        x = rand_images(b=8, c=c, seed=11)
        x[0], x[1, :, :2] = 0.0, 1.0
        y = x.clone()
        A._affine_jitter_(y, torch.ones(8), torch.zeros(8), torch.zeros(8))
        assert torch.equal(y, x)
    p = A.sample_view_params(64, 8, 8, ViewConfig(), torch.Generator().manual_seed(2))
    f, a, m = A.jitter_coefficients(p, [True] * 4)
    hue_slot = p["order"] == A.JITTER_OPS.index("hue")
    assert (f[hue_slot] == 1).all() and (a[hue_slot] == 0).all() and (m[hue_slot] == 0).all()


def test_hue_offsets_made_on_the_device_equal_the_constants():
    shift = torch.tensor([0.0, 0.1, -0.37, 2.25])
    expected = torch.remainder(6.0 * (shift - torch.round(shift))[:, None] + torch.tensor(A._HUE_OFFSETS),
                               6.0) - 5.0
    assert torch.equal(A._hue_sigma(shift, torch.float32), expected)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("order", ["random", "fixed"])
@pytest.mark.parametrize("jitter_p", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("strengths", [(0.4, 0.4, 0.4, 0.1), (0.8, 0.0, 0.5, 0.0), (0.0, 0.0, 0.0, 0.3),
                                       (0.0, 0.0, 0.0, 0.0), (0.0, 0.6, 0.0, 0.5)])
def test_dense_color_jitter_equals_the_cpu_path(channels, order, jitter_p, strengths):
    x = rand_images(b=48, c=channels, seed=4)
    b, c, s, h = strengths
    cfg = ViewConfig(brightness=b, contrast=c, saturation=s, hue=h, jitter_p=jitter_p, jitter_order=order)
    p = A.sample_view_params(48, 12, 10, cfg, torch.Generator().manual_seed(9))
    expected = A.color_jitter(x, p, cfg, sync_free=False)
    with no_host_sync():
        got = A.color_jitter(x, p, cfg, sync_free=True)
        y = x.clone()
        in_place = A.color_jitter(y, p, cfg, inplace=True, sync_free=True)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert torch.equal(in_place, got) and (in_place.data_ptr() == y.data_ptr() or not any(A.jitter_active(cfg, channels)))
    assert torch.equal(x, rand_images(b=48, c=channels, seed=4))  # not inplace: input kept


_VARIANTS = {
    "recipe": {},
    "no_jitter": {"jitter_p": 0.0},
    "grayscale_only": {"jitter_p": 0.0, "grayscale_p": 0.5, "blur_p": 0.0, "solarize_p": 0.0},
    "fixed_order": {"jitter_order": "fixed", "jitter_p": 1.0},
    "zero_strengths": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "jitter_p": 1.0},
    "hue_only": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.5, "jitter_p": 1.0,
                 "grayscale_p": 0.0},
}


@pytest.mark.parametrize("recipe", ["simclr", "byol", "multicrop"])
@pytest.mark.parametrize("variant", list(_VARIANTS))
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("normalised", [False, True])
def test_dense_views_equal_the_cpu_path_views(recipe, variant, channels, normalised):
    x = torch.randint(0, 256, (24, channels, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    stats = {"mean": [0.5, 0.45, 0.4][:channels], "std": [0.25, 0.2, 0.3][:channels]} if normalised else {}
    aug = build_augment(recipe, backend="torch", **_VARIANTS[variant], **stats)
    expected = _views(aug, x, 13, dense=False)
    got = _views(aug, x, 13, dense=True)
    atol = 1e-6 / (min(stats["std"]) if normalised else 1.0)
    assert len(got) == len(expected) == aug.num_views
    for u, v in zip(got, expected, strict=True):
        torch.testing.assert_close(u, v, atol=atol, rtol=0)
    plain = _views(build_augment(recipe, backend="torch", **stats, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                                 solarize_p=0.0), x, 13, dense=False)
    # not vacuous: the colour/blur/solarise ops changed pixels, except where none can act on 1 channel
    idle = channels == 1 and (variant == "grayscale_only" or (recipe == "simclr" and variant not in ("recipe", "fixed_order")))
    assert any(not torch.allclose(u, v, atol=1e-3) for u, v in zip(got, plain, strict=True)) != idle


def test_channel_constants_are_filled_per_channel():
    x = torch.zeros(2, 3, 4, 4)
    for values in ([0.1, 0.2, 0.3], (0.1, 0.2, 0.3), np.array([0.1, 0.2, 0.3]), torch.tensor([0.1, 0.2, 0.3])):
        assert torch.equal(A._channel_constants(values, x), torch.tensor([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1))
    with pytest.raises(InputError, match="3 channels"):
        A.apply_view(x, A.sample_view_params(2, 4, 4, ViewConfig()), ViewConfig(), [0.5, 0.5], [0.2, 0.2],
                     sync_free=True)


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                           reason="needs a CUDA device (the sync-free path is the default there)")


@_CUDA
@pytest.mark.parametrize("recipe", ["simclr", "byol", "multicrop"])
def test_cuda_views_make_no_synchronising_call(recipe):
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, device="cuda")
    aug = build_augment(recipe, mean=[0.5, 0.45, 0.4], std=[0.25, 0.2, 0.3])
    assert aug.backend == "auto" and not A.use_native(aug.backend, x)
    aug(x, torch.Generator(device="cuda").manual_seed(0))  # warm-up: lazy initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        views = aug(x, torch.Generator(device="cuda").manual_seed(1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(views) == aug.num_views and all(v.is_cuda for v in views)


@_CUDA
@pytest.mark.parametrize("recipe", ["simclr", "byol", "multicrop"])
@pytest.mark.parametrize("channels", [3, 1])
def test_cuda_views_equal_cpu_views_from_the_same_parameters(recipe, channels):
    x = torch.randint(0, 256, (64, channels, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = [0.5, 0.45, 0.4][:channels], [0.25, 0.2, 0.3][:channels]
    gen = torch.Generator().manual_seed(4)
    for group in build_augment(recipe).groups:
        p = A.sample_view_params(64, 32, 32, group.config, gen)
        p_cuda = {k: v.cuda() for k, v in p.items()}
        for m, s, atol in ((None, None, 1e-5), (mean, std, 1e-5 / min(std))):
            cpu = A.apply_view(x, p, group.config, m, s)
            cuda = A.apply_view(x.cuda(), p_cuda, group.config, m, s)
            torch.testing.assert_close(cuda.cpu(), cpu, atol=atol, rtol=0)
