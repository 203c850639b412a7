"""Dataset registry, readers of each official format, checksums, safe extraction, downloads."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from collapselab._validation import InputError
from collapselab.data import (
    DATASETS,
    FolderImages,
    IntegrityError,
    extract_archive,
    get_dataset,
    is_present,
    list_datasets,
    load_imagefolder,
    md5_file,
)
from collapselab.data import datasets as ds

# --- digits -------------------------------------------------------------------------------------

def test_digits_split_is_fixed_disjoint_and_covers_all_1797_images():
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    assert (len(train), len(test)) == (DATASETS["digits"].splits["train"], DATASETS["digits"].splits["test"])
    assert len(train) + len(test) == 1797
    idx = ds.digits_split_indices()
    assert len(np.intersect1d(idx["train"], idx["test"])) == 0
    again = get_dataset("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    # stratified: every class is in both splits
    assert set(test.labels.tolist()) == set(range(10)) == set(train.labels.tolist())


def test_digits_pixels_are_sklearn_values_rescaled_from_0_16_to_0_255():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    test = get_dataset("digits", "test")
    i = int(ds.digits_split_indices()["test"][5])
    expected = np.rint(bunch.images[i] * 255 / 16).astype(np.uint8)
    assert test.images.dtype == torch.uint8 and test.images.shape[1:] == (1, 8, 8)
    assert np.array_equal(test.images[5, 0].numpy(), expected)
    assert int(test.labels[5]) == int(bunch.target[i])
    assert test.classes == [str(d) for d in range(10)]


# --- registry and errors --------------------------------------------------------------------------

def test_registry_lists_every_dataset_of_the_issue():
    assert set(list_datasets()) >= {"digits", "cifar10", "cifar100", "svhn", "stl10", "imagefolder", "npz"}
    assert DATASETS["stl10"].splits["unlabeled"] == 100000


def test_unknown_dataset_name_suggests_the_closest():
    with pytest.raises(InputError, match="did you mean 'cifar10'"):
        get_dataset("cifar1")


def test_unknown_split_names_the_valid_splits():
    with pytest.raises(InputError, match="unlabeled"):
        get_dataset("digits", "unlabeled")


def test_missing_dataset_offline_says_which_file_to_place_where(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("cifar10", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "c58f30108f718f92721af3b95e74349a" in msg
    assert not is_present("cifar10", tmp_path)


def test_default_data_dir_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("COLLAPSELAB_DATA", str(tmp_path / "d"))
    assert ds.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("COLLAPSELAB_DATA")
    assert ds.default_data_dir() == Path.home() / ".cache" / "collapselab" / "data"


# --- archive formats ------------------------------------------------------------------------------

def test_cifar10_archive_is_verified_extracted_and_read(tmp_path, monkeypatch, writers):
    archive = tmp_path / "cifar-10-python.tar.gz"
    written = writers.write_cifar10_archive(archive)
    writers.use_checksum(monkeypatch, "cifar10", archive.name, md5_file(archive))
    train = get_dataset("cifar10", "train", data_dir=tmp_path)
    test = get_dataset("cifar10", "test", data_dir=tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    data, labels = written["data_batch_3"]
    assert np.array_equal(train.images[4:6].numpy(), data.reshape(2, 3, 32, 32))
    assert train.labels[4:6].tolist() == labels
    assert train.classes == [f"class{i}" for i in range(10)]
    assert is_present("cifar10", tmp_path)


def test_cifar100_reads_fine_labels(tmp_path, monkeypatch, writers):
    archive = tmp_path / "cifar-100-python.tar.gz"
    written = writers.write_cifar100_archive(archive)
    writers.use_checksum(monkeypatch, "cifar100", archive.name, md5_file(archive))
    test = get_dataset("cifar100", "test", data_dir=tmp_path)
    assert np.array_equal(test.images.numpy(), written["test"][0].reshape(-1, 3, 32, 32))
    assert test.labels.tolist() == written["test"][1]
    assert len(test.classes) == 100


def test_svhn_mat_is_transposed_to_nchw_and_label_10_means_digit_0(tmp_path, monkeypatch, writers):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10]], dtype=np.uint8)
    path = tmp_path / "test_32x32.mat"
    scipy.io.savemat(path, {"X": x, "y": y})
    writers.use_checksum(monkeypatch, "svhn", path.name, md5_file(path))
    test = get_dataset("svhn", "test", data_dir=tmp_path)
    assert test.labels.tolist() == [0, 1, 9, 0]
    assert np.array_equal(test.images[2].numpy(), x[:, :, :, 2].transpose(2, 0, 1))


def test_svhn_file_with_wrong_checksum_is_refused(tmp_path):
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.ones((1, 1))})
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        get_dataset("svhn", "train", data_dir=tmp_path)


def test_stl10_binary_is_read_column_major_with_labels_shifted_to_zero(tmp_path, monkeypatch, writers):
    archive = tmp_path / "stl10_binary.tar.gz"
    written = writers.write_stl10_archive(archive)
    writers.use_checksum(monkeypatch, "stl10", archive.name, md5_file(archive))
    for split in ("train", "test"):
        d = get_dataset("stl10", split, data_dir=tmp_path)
        x, y = written[split]
        assert np.array_equal(d.images.numpy(), x)
        assert d.labels.tolist() == (y.astype(int) - 1).tolist()
    unl = get_dataset("stl10", "unlabeled", data_dir=tmp_path)
    assert np.array_equal(unl.images.numpy(), written["unlabeled"][0])
    assert unl.labels.tolist() == [-1, -1]
    assert unl.classes == [f"n{i}" for i in range(10)]


def test_imagefolder_reads_class_subfolders_and_caches_decoded_array(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    arrays = {}
    for split in ("train", "test"):
        for cls in ("dog", "cat"):
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for k in range(2):
                a = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                Image.fromarray(a).save(tmp_path / "imgs" / split / cls / f"{k}.png")
                arrays[(split, cls, k)] = a
    cache = tmp_path / "cache"
    d = load_imagefolder(tmp_path / "imgs", "test", cache_dir=cache)
    assert d.classes == ["cat", "dog"] and d.labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(d.images[2].numpy(), arrays[("test", "dog", 0)].transpose(2, 0, 1))
    assert len(list(cache.glob("test-*.npy"))) == 1
    again = load_imagefolder(tmp_path / "imgs", "test", cache_dir=cache)
    assert torch.equal(again.images, d.images)
    streamed = load_imagefolder(tmp_path / "imgs", "test", max_memory_bytes=0)
    assert isinstance(streamed.images, FolderImages)
    assert torch.equal(streamed.images[torch.tensor([3, 0])], d.images[[3, 0]])


def test_imagefolder_with_mixed_sizes_asks_for_image_size(tmp_path):
    from PIL import Image

    for cls, size in (("a", (4, 4)), ("b", (5, 4))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", size).save(tmp_path / cls / "x.png")
    with pytest.raises(InputError, match="image_size"):
        get_dataset("imagefolder", data_dir=tmp_path)
    d = load_imagefolder(tmp_path, image_size=3, cache_dir=tmp_path / "c")
    assert d.images.shape == (2, 3, 3, 3)


def test_npz_accepts_nhwc_uint8_and_a_folder_of_splits(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (4, 7, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", x=x, y=np.array([0, 1, 1, 2]))
    np.savez(tmp_path / "test.npz", x=x[:2, :, :, 0])  # grayscale (N, H, W), no labels
    train = get_dataset("npz", "train", data_dir=tmp_path)
    assert np.array_equal(train.images.numpy(), x.transpose(0, 3, 1, 2))
    assert train.classes == ["0", "1", "2"]
    test = get_dataset("npz", "test", data_dir=tmp_path)
    assert test.images.shape == (2, 1, 7, 7) and test.labels.tolist() == [-1, -1]


@pytest.mark.parametrize("shape, want", [
    ((5, 4, 4, 3), (5, 3, 4, 4)),   # 4x4 RGB as (N, H, W, C): not 4 channels of 4x3
    ((5, 1, 1, 3), (5, 3, 1, 1)),   # 1x1 RGB: not one channel of 1x3
    ((5, 3, 4, 4), (5, 3, 4, 4)),   # 4x4 RGB as (N, C, H, W)
    ((5, 1, 1, 1), (5, 1, 1, 1)),
])
def test_npz_with_two_possible_channel_axes_reads_the_square_images(tmp_path, shape, want):
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.savez(tmp_path / "train.npz", x=x)
    images = get_dataset("npz", "train", data_dir=tmp_path).images.numpy()
    nhwc = shape[-1] in (1, 3, 4) and want[1] == shape[-1] and shape[1:] != (1, 1, 1)
    assert np.array_equal(images, x.transpose(0, 3, 1, 2) if nhwc else x)
    assert images.shape == want


def test_npz_that_reads_as_square_images_both_ways_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((2, 3, 3, 3), dtype=np.uint8))
    with pytest.raises(InputError, match=r"channel axis of shape \(2, 3, 3, 3\)"):
        get_dataset("npz", "train", data_dir=tmp_path)


def test_npz_with_wrong_dtype_or_missing_file_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.full((2, 4, 4), 300, dtype=np.int64))
    with pytest.raises(InputError, match="uint8"):
        get_dataset("npz", data_dir=tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match=r"test\.npz"):
        get_dataset("npz", "test", data_dir=tmp_path)
    with pytest.raises(InputError, match="data_dir"):
        get_dataset("npz")


# --- integrity and safety -------------------------------------------------------------------------

def test_corrupt_archive_fails_the_checksum_and_is_not_extracted(tmp_path, writers):
    writers.write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")  # not the official bytes
    with pytest.raises(IntegrityError, match="c58f30108f718f92721af3b95e74349a"):
        get_dataset("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "cifar-10-batches-py").exists()


@pytest.mark.parametrize("member", ["../evil.txt", "ok/../../evil.txt", "/tmp/collapselab-evil.txt"])
def test_archive_member_escaping_the_target_is_refused_and_nothing_is_written(tmp_path, member, writers):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        writers.add_bytes(tar, "ok/good.txt", b"fine")
        writers.add_bytes(tar, member, b"evil")
    dest = tmp_path / "out"
    with pytest.raises(InputError, match="refusing to extract"):
        extract_archive(archive, dest)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/collapselab-evil.txt").exists()
    assert not dest.exists() or list(dest.iterdir()) == []


def test_archive_with_a_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("data/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(InputError, match="link"):
        extract_archive(archive, tmp_path / "out")


def test_interrupted_extraction_leaves_nothing_that_counts_as_present(tmp_path, monkeypatch, writers):
    archive = tmp_path / "cifar-10-python.tar.gz"
    writers.write_cifar10_archive(archive)
    writers.use_checksum(monkeypatch, "cifar10", archive.name, md5_file(archive))

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tarfile.TarFile, "extractall", boom)
    with pytest.raises(OSError, match="disk full"):
        get_dataset("cifar10", data_dir=tmp_path)
    assert not is_present("cifar10", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo collapselab-pwned > /dev/null",))


def test_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "evil").write_bytes(pickle.dumps({"data": _RunsCode()}, protocol=2))
    with pytest.raises(InputError, match="refusing to unpickle"):
        ds._load_pickle(folder / "evil")


def test_download_verifies_md5_and_renames_only_a_good_file(tmp_path, monkeypatch, writers):
    source = tmp_path / "src" / "cifar-10-python.tar.gz"
    source.parent.mkdir()
    writers.write_cifar10_archive(source)
    data_dir = tmp_path / "data"
    # wrong published checksum: nothing is kept, no partial file
    writers.use_checksum(monkeypatch, "cifar10", source.name, "0" * 32, url=source.as_uri())
    with pytest.raises(IntegrityError):
        get_dataset("cifar10", data_dir=data_dir, download=True)
    assert list(data_dir.iterdir()) == []
    # right checksum: downloaded, extracted, readable
    writers.use_checksum(monkeypatch, "cifar10", source.name, md5_file(source), url=source.as_uri())
    d = get_dataset("cifar10", "test", data_dir=data_dir, download=True)
    assert len(d) == 2 and (data_dir / source.name).exists()


def test_unreachable_url_says_where_to_place_the_file(tmp_path, monkeypatch, writers):
    writers.use_checksum(monkeypatch, "cifar10", "cifar-10-python.tar.gz", "0" * 32,
                 url=(tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(FileNotFoundError, match="place it at"):
        get_dataset("cifar10", data_dir=tmp_path / "d", download=True)


def test_image_dataset_rejects_wrong_dtype():
    with pytest.raises(InputError, match="uint8"):
        ds.ImageDataset("x", "train", torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))


def test_re_extraction_replaces_an_incomplete_folder(tmp_path, writers):
    archive = tmp_path / "cifar-10-python.tar.gz"
    writers.write_cifar10_archive(archive)
    stale = tmp_path / "cifar-10-batches-py"
    stale.mkdir()
    (stale / "data_batch_1").write_bytes(b"truncated")
    extract_archive(archive, tmp_path)
    assert (stale / "test_batch").exists() and (stale / "data_batch_1").stat().st_size > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_verified_stamp_does_not_hide_a_file_changed_later(tmp_path, monkeypatch, writers):
    path = tmp_path / "test_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1))})
    writers.use_checksum(monkeypatch, "svhn", path.name, md5_file(path))
    get_dataset("svhn", "test", data_dir=tmp_path)
    assert (tmp_path / "test_32x32.mat.md5-verified").exists()
    get_dataset("svhn", "test", data_dir=tmp_path)  # trusted via the stamp
    scipy.io.savemat(path, {"X": np.ones((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1))})
    os.utime(path, ns=(0, 1))  # a new mtime, as any rewrite gives
    with pytest.raises(IntegrityError):
        get_dataset("svhn", "test", data_dir=tmp_path)
