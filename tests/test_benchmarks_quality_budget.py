"""Smoke test of ``benchmarks/quality_budget.py`` on a tiny synthetic npz dataset: the data helpers
do what they say, and a 3-second run reports every number its table is built from (the accuracies
themselves are not checked). Runs without torchvision (the plain side is then skipped)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_budget.py"
_spec = importlib.util.spec_from_file_location("quality_budget", SCRIPT)
quality_budget = importlib.util.module_from_spec(_spec)
sys.modules["quality_budget"] = quality_budget
_spec.loader.exec_module(quality_budget)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _write_npz_dataset(folder: Path, n_train: int = 200, n_test: int = 100) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        np.savez(folder / f"{split}.npz", x=x, y=np.arange(n) % 10)


def test_balanced_subset_takes_equal_counts_per_class_without_repeats():
    labels = np.repeat(np.arange(10), [30, 25, 40, 20, 22, 50, 21, 33, 28, 20])
    index = quality_budget.balanced_subset(labels, 100, seed=3)
    assert np.bincount(labels[index]).tolist() == [10] * 10
    assert len(np.unique(index)) == 100 and np.all(np.diff(index) > 0)
    assert np.array_equal(index, quality_budget.balanced_subset(labels, 100, seed=3))
    assert not np.array_equal(index, quality_budget.balanced_subset(labels, 100, seed=4))
    assert len(quality_budget.balanced_subset(labels, 0, seed=3)) == len(labels)
    with pytest.raises(ValueError, match="class 3 has 20 images"):
        quality_budget.balanced_subset(labels, 210, seed=0)


def test_resize_images_gives_uint8_at_the_new_side_and_keeps_flat_images_flat():
    images = torch.full((5, 3, 32, 32), 77, dtype=torch.uint8)
    images[1] = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    small = quality_budget.resize_images(images, 16)
    assert small.shape == (5, 3, 16, 16) and small.dtype == torch.uint8
    assert bool((small[0] == 77).all())
    assert small[1].float().mean().item() == pytest.approx(images[1].float().mean().item(), abs=2)


def test_prepare_data_writes_balanced_resized_splits(tmp_path):
    source, dest = tmp_path / "source", tmp_path / "derived"
    source.mkdir()
    _write_npz_dataset(source)
    info = quality_budget.prepare_data(source, dest, train_images=100, queries=50, size=16, seed=0)
    assert info["train"]["per_class"] == [10] * 10 and info["test"]["per_class"] == [5] * 10
    with np.load(dest / "train.npz") as z:
        assert z["x"].shape == (100, 16, 16, 3) and z["x"].dtype == np.uint8
        assert np.bincount(z["y"]).tolist() == [10] * 10


def test_tiny_run_reports_every_number_of_the_table(tmp_path, capsys):
    _write_npz_dataset(tmp_path)
    out = tmp_path / "quality.json"
    result = quality_budget.main([
        "--data", str(tmp_path), "--budget", "3", "--train-images", "100", "--queries", "50",
        "--size", "16", "--methods", "simclr", "--backbone", "small_cnn",
        "--backbone-args", '{"width": 4}', "--set", "data.batch_size=32", "--plain-batch", "32",
        "--workers", "0", "--out", str(out),
    ])
    printed = capsys.readouterr().out
    assert "target met?" in printed and "collapselab kNN" in printed
    assert result["data"]["train"]["per_class"] == [10] * 10
    assert result["data"]["train"]["shape"] == [3, 16, 16]
    (row,) = result["rows"]
    lib = row["collapselab"]
    assert 0 <= lib["knn_top1"] <= 100 and lib["steps"] > 0 and lib["epochs"] > 0
    assert lib["img_per_s"] > 0 and lib["time_used_s"] > 0
    assert lib["backbone"] == {"name": "small_cnn", "args": {"width": 4}}
    assert 'small_cnn{"width": 4}' in lib["recipe"]
    assert 0 <= row["raw_pixels"] <= 100 and 0 <= row["untrained"] <= 100
    assert row["lib_minus_raw"] == pytest.approx(lib["knn_top1"] - row["raw_pixels"])
    plain = row["plain"]
    if plain.get("skipped"):
        assert row["lib_minus_plain"] is None and "plain side skipped" in printed
    else:
        assert plain["steps"] > 0 and plain["img_per_s"] > 0 and 0 <= plain["knn_top1"] <= 100
        assert row["lib_minus_plain"] == pytest.approx(lib["knn_top1"] - plain["knn_top1"])
    assert row["target"]["met"] in (True, False, None)
    assert json.loads(out.read_text())["rows"][0]["method"] == "simclr"


def _naive_weighted_knn(bank: np.ndarray, bank_y: np.ndarray, queries: np.ndarray,
                        query_y: np.ndarray, k: int, tau: float) -> float:
    """Wu et al. 2018's weighted vote, one query at a time (the reference for the pixel floor)."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    correct = 0
    for q, y in zip(queries, query_y, strict=True):
        sims = b @ (q / np.linalg.norm(q))
        top = np.argsort(-sims)[:k]
        votes = np.zeros(10)
        for i in top:
            votes[bank_y[i]] += np.exp(sims[i] / tau)
        correct += int(np.argmax(votes) == y)
    return 100.0 * correct / len(queries)


def test_raw_pixel_floor_is_the_knn_of_pixels_in_0_1_and_std_pixels_is_reported_beside(tmp_path):
    """The targets are stated against raw pixels scaled to [0, 1] (what `collapselab eval` reports
    as baseline_pixels); standardised pixels are a separate, reported column."""
    source, again = tmp_path / "src", tmp_path / "again"
    source.mkdir()
    rng = np.random.default_rng(1)
    for split, n in (("train", 200), ("test", 100)):  # class-dependent brightness: pixels carry signal
        y = np.arange(n) % 10
        x = rng.integers(0, 128, (n, 16, 16, 3)) + (y * 12)[:, None, None, None]
        np.savez(source / f"{split}.npz", x=x.astype(np.uint8), y=y)
    result = quality_budget.main([
        "--data", str(source), "--budget", "2", "--train-images", "100", "--queries", "50",
        "--size", "16", "--methods", "simclr", "--backbone", "small_cnn",
        "--backbone-args", '{"width": 4}', "--set", "data.batch_size=32", "--skip-plain"])
    quality_budget.prepare_data(source, again, train_images=100, queries=50, size=16, seed=0)
    with np.load(again / "train.npz") as tr, np.load(again / "test.npz") as te:
        bank = tr["x"].reshape(100, -1) / 255.0
        queries = te["x"].reshape(50, -1) / 255.0
        want = _naive_weighted_knn(bank, tr["y"], queries, te["y"], k=100, tau=0.1)
    (row,) = result["rows"]
    assert row["raw_pixels"] == pytest.approx(want)
    assert row["std_pixels"] != pytest.approx(want)  # centring changes the cosine's neighbours
    assert row["lib_minus_std"] == pytest.approx(row["collapselab"]["knn_top1"] - row["std_pixels"])


def test_check_target_applies_margins_only_at_the_target_settings():
    full = quality_budget.check_target("cpu", 40.0, 27.0, 34.0, 30.0)
    assert full["checks"] == {"> untrained, raw": True, "raw + 12": True, "plain + 5": True}
    assert full["met"] is True
    assert quality_budget.check_target("cpu", 38.0, 27.0, 34.0, 30.0)["met"] is False  # +11
    assert quality_budget.check_target("cpu", 40.0, 27.0, 36.0, 30.0)["met"] is False  # plain + 4
    floors = quality_budget.check_target("cpu", 89.6, 90.8, None, 50.4, full=False)
    assert floors == {"checks": {"> untrained, raw": False}, "met": False}
    assert quality_budget.check_target("cpu", 92.0, 90.8, None, 50.4, full=False)["met"] is True
    gpu = quality_budget.check_target("cuda", 76.0, 30.0, 65.0, 34.0)
    assert gpu["checks"] == {">= 75 %": True, "plain + 10": True} and gpu["met"] is True
    assert quality_budget.check_target("cuda", 76.0, 30.0, 65.0, 34.0, full=False)["met"] is None


def test_plain_views_of_one_channel_images_are_grey_pil_images():
    """(N, H, W, 1) arrays reach the per-image transform as 2-D 'L' images (PIL has no (H, W, 1))."""
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    views = quality_budget.TwoViews(images, lambda im: (im.mode, np.asarray(im)))
    (mode, a), (_, b) = views[1]
    assert mode == "L" and np.array_equal(a, images[1, ..., 0]) and np.array_equal(a, b)


def test_a_method_without_a_plain_loop_is_scored_against_the_floors_only(tmp_path):
    """Any collapselab method can be benchmarked; only SimCLR and BYOL have a plain side and the
    margin targets, so another method's row skips the plain loop (saying why) and checks only
    that it beats the untrained network and raw pixels."""
    _write_npz_dataset(tmp_path)
    result = quality_budget.main([
        "--data", str(tmp_path), "--budget", "2", "--train-images", "100", "--queries", "50",
        "--size", "16", "--methods", "vicreg", "--backbone", "small_cnn",
        "--backbone-args", '{"width": 4}', "--set", "data.batch_size=32", "--workers", "0"])
    (row,) = result["rows"]
    assert row["method"] == "vicreg" and row["collapselab"]["steps"] > 0
    assert row["plain"]["skipped"] and row["lib_minus_plain"] is None
    assert set(row["target"]["checks"]) == {"> untrained, raw"}
    floor = max(row["untrained"], row["raw_pixels"])
    assert row["target"]["met"] is (row["collapselab"]["knn_top1"] > floor)
