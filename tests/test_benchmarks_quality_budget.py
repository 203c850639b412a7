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

