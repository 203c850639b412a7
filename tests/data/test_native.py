"""The native C kernel against the torch ops (which test_augment.py checks against references)."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from collapselab._validation import InputError
from collapselab.data import augment as A
from collapselab.data import native
from collapselab.data.augment import ViewConfig, build_augment

HAS_COMPILER = shutil.which("cc") is not None
needs_kernel = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler (cc) on this machine")

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)

CASES = {
    "simclr 32px": (ViewConfig(), 3, 32, 32),
    "byol view2 blur + solarise": (ViewConfig(saturation=0.2, blur_p=0.5, solarize_p=0.5), 3, 32, 32),
    "fixed order, hue 0.5, half size": (ViewConfig(jitter_order="fixed", hue=0.5, size=0.5), 3, 32, 32),
    "local crop 12 px of 40x36, blur": (ViewConfig(size=12, crop_scale=(0.05, 0.4), blur_p=1.0), 3, 40, 36),
    "upsampled 8 -> 20, replicate padding": (ViewConfig(size=20, blur_p=1.0, blur_kernel=19), 3, 8, 8),
    "grayscale digits": (ViewConfig(), 1, 8, 8),
    "grayscale blur kernel 9": (ViewConfig(blur_p=1.0, blur_kernel=9, solarize_p=0.5), 1, 8, 8),
    "only brightness": (ViewConfig(contrast=0, saturation=0, hue=0, grayscale_p=0), 3, 16, 16),
    "only hue": (ViewConfig(brightness=0, contrast=0, saturation=0, jitter_p=1.0), 3, 16, 16),
    "no jitter at all": (ViewConfig(brightness=0, contrast=0, saturation=0, hue=0), 3, 16, 16),
}


def test_no_compiler_or_disabled_means_not_available_and_auto_uses_torch(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("COLLAPSELAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    native._library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="collapselab.data.native"):
            assert not native.available()
        assert "no C compiler" in caplog.text
        x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
        assert not A.use_native("auto", x)
        views = build_augment("simclr")(x, torch.Generator().manual_seed(0))  # falls back, works
        assert views[0].shape == (4, 3, 8, 8)
        with pytest.raises(RuntimeError, match="not available"):
            build_augment("simclr", backend="native")(x, torch.Generator().manual_seed(0))
        monkeypatch.delenv("CC")
        monkeypatch.setenv("COLLAPSELAB_NATIVE", "0")
        native._library.cache_clear()
        assert not native.available()
    finally:
        native._library.cache_clear()
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


@needs_kernel
def test_kernel_builds_once_atomically_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("COLLAPSELAB_CACHE", str(tmp_path))
    path = native.build()
    assert path.parent == tmp_path and path.exists()
    stamp = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


@needs_kernel
def test_a_compile_error_is_reported_with_the_compiler_message(monkeypatch, tmp_path):
    bad = tmp_path / "views.c"
    bad.write_text("this is not C;\n")
    monkeypatch.setattr(native, "SOURCE", bad)
    monkeypatch.setenv("COLLAPSELAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match=r"compiling views\.c failed.*error"):
        native.build()
    assert list((tmp_path / "cache").iterdir()) == []


@needs_kernel
def test_the_kernel_is_available_where_a_compiler_is():
    # guards against a kernel that silently stopped compiling (auto would hide it)
    assert native.available()


@needs_kernel
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_native_view_equals_the_torch_view(case, normalise, dtype):
    config, c, h, w = CASES[case]
    gen = torch.Generator().manual_seed(list(CASES).index(case))
    images = torch.randint(0, 256, (97, c, h, w), dtype=torch.uint8, generator=gen)
    if dtype == torch.float32:
        images = images.float() / 255
    params = A.sample_view_params(97, h, w, config, gen)
    mean, std = (MEAN3[:c], STD3[:c]) if normalise else (None, None)
    expected = A.apply_view(images, params, config, mean, std)
    got = native.apply_view_native(images, params, config, mean, std)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    scale = 1 / min(STD3) if normalise else 1.0
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6 * scale)


@needs_kernel
def test_result_does_not_depend_on_the_thread_count():
    config = ViewConfig(blur_p=0.5, solarize_p=0.3)
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=gen)
    params = A.sample_view_params(64, 16, 16, config, gen)
    one = native.apply_view_native(images, params, config, threads=1)
    for threads in (2, 3, 64, 500):
        assert torch.equal(native.apply_view_native(images, params, config, threads=threads), one)


@needs_kernel
def test_recipe_views_are_the_same_with_either_backend():
    images = torch.randint(0, 256, (40, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for recipe in ("simclr", "byol", "multicrop"):
        views = {}
        for backend in ("torch", "native"):
            aug = build_augment(recipe, backend=backend, mean=list(MEAN3), std=list(STD3))
            views[backend] = aug(images, torch.Generator().manual_seed(7))
        assert len(views["torch"]) == len(views["native"])
        for t, n in zip(views["torch"], views["native"], strict=True):
            torch.testing.assert_close(n, t, rtol=0, atol=1e-5)


@needs_kernel
def test_non_contiguous_and_empty_batches():
    config = ViewConfig()
    gen = torch.Generator().manual_seed(5)
    base = torch.randint(0, 256, (10, 16, 16, 3), dtype=torch.uint8, generator=gen)
    images = base.permute(0, 3, 1, 2)  # channels-last memory, (B, C, H, W) view
    params = A.sample_view_params(10, 16, 16, config, gen)
    torch.testing.assert_close(native.apply_view_native(images, params, config),
                               A.apply_view(images.contiguous(), params, config), rtol=0, atol=2e-6)
    empty = native.apply_view_native(images[:0], A.sample_view_params(0, 16, 16, config, gen), config)
    assert empty.shape == (0, 3, 16, 16)


def test_backend_names_and_devices_are_checked():
    with pytest.raises(InputError, match="did you mean 'native'"):
        build_augment("simclr", backend="natve")
    meta = torch.empty((2, 3, 8, 8), dtype=torch.uint8, device="meta")
    with pytest.raises(InputError, match="runs on the CPU"):
        A.use_native("native", meta)
    assert not A.use_native("auto", meta)  # auto: torch ops wherever the batch lives
    assert not A.use_native("torch", torch.zeros(2, 3, 8, 8))


@needs_kernel
def test_native_checks_its_inputs():
    params = A.sample_view_params(2, 8, 8, ViewConfig(), None)
    with pytest.raises(InputError, match="3/3 values for 1 channels"):
        native.apply_view_native(torch.zeros(2, 1, 8, 8), params, ViewConfig(), MEAN3, STD3)
    with pytest.raises(InputError, match="expected shape"):
        build_augment("simclr", backend="native")(torch.zeros(3, 8, 8), None)
