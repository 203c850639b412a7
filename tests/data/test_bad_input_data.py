"""Own data (imagefolder, npz): test labels follow the train split's classes by name, and a
missing test split is recognised (the trainer then skips evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collapselab._validation import InputError
from collapselab.data import get_dataset, load_imagefolder
from collapselab.data.datasets import missing_split_hint


def _folder(root: Path, classes: dict[str, int], seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(root / cls / f"{k}.png")


def test_imagefolder_test_labels_follow_the_train_class_index_by_name(tmp_path: Path) -> None:
    _folder(tmp_path / "train", {"a": 2, "b": 2, "c": 2})
    _folder(tmp_path / "test", {"a": 1, "c": 2})  # no 'b': fine
    test = load_imagefolder(tmp_path, "test", cache_dir=tmp_path / "cache")
    assert test.classes == ["a", "b", "c"]
    assert test.labels.tolist() == [0, 2, 2]  # 'c' is class 2 of train, not 1
    streamed = load_imagefolder(tmp_path, "test", max_memory_bytes=0)
    assert streamed.labels.tolist() == [0, 2, 2]


def test_imagefolder_test_class_unknown_to_train_is_named(tmp_path: Path) -> None:
    _folder(tmp_path / "train", {"a": 2, "b": 2})
    _folder(tmp_path / "test", {"a": 1, "c": 1})
    with pytest.raises(InputError, match=r"class folder\(s\) \['c'\] .* not classes of the train split \['a', 'b'\]") as info:
        get_dataset("imagefolder", "test", data_dir=tmp_path)
    assert "\n" not in str(info.value)
    assert get_dataset("imagefolder", "train", data_dir=tmp_path).labels.tolist() == [0, 0, 1, 1]


def test_missing_split_hint_for_own_data(tmp_path: Path) -> None:
    x = np.zeros((4, 4, 4), np.uint8)
    np.savez(tmp_path / "train.npz", x=x)
    assert missing_split_hint("npz", "train", tmp_path) is None
    assert "test.npz" in missing_split_hint("npz", "test", tmp_path)
    assert "single file" in missing_split_hint("npz", "test", tmp_path / "train.npz")
    np.savez(tmp_path / "test.npz", x=x)
    assert missing_split_hint("npz", "test", tmp_path) is None
    _folder(tmp_path / "imgs", {"a": 1})
    assert "test" in missing_split_hint("imagefolder", "test", tmp_path / "imgs")
    _folder(tmp_path / "imgs" / "test", {"a": 1})
    assert missing_split_hint("imagefolder", "test", tmp_path / "imgs") is None
    assert missing_split_hint("digits", "test", None) is None  # registered datasets have their splits


def test_build_augment_refuses_views_that_are_not_a_mapping_even_when_falsy() -> None:
    """views=0 (or []) is not 'no overrides': it is a malformed views section."""
    from collapselab.data import build_augment

    for views in (0, [], "x"):
        with pytest.raises(InputError, match="'views' must map group names"):
            build_augment({"recipe": "byol", "views": views})


def test_npz_labels_must_be_whole_numbers_not_truncated(tmp_path: Path) -> None:
    x = np.zeros((10, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "train.npz", x=x, y=np.linspace(0, 1, 10))
    with pytest.raises(InputError, match="'y' holds non-integer values"):
        get_dataset("npz", "train", data_dir=tmp_path)
    np.savez(tmp_path / "train.npz", x=x, y=np.array(["cat", "dog"] * 5))
    with pytest.raises(InputError, match="'y' holds <U3 values"):
        get_dataset("npz", "train", data_dir=tmp_path)
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(10, dtype=np.float32))  # whole floats are fine
    assert get_dataset("npz", "train", data_dir=tmp_path).labels.tolist() == list(range(10))
