"""DeviceLoader: the same partition as DistributedSampler + BatchSampler, reshuffle, drop_last."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler

from collapselab._validation import InputError
from collapselab.data import DeviceLoader, get_dataset, shard_indices


def indexed_images(n):
    """Images whose first pixel is their index (mod 256) and labels equal to the index."""
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    return images, torch.arange(n)


@pytest.mark.parametrize(("n", "replicas", "batch", "drop_last", "shuffle"), [
    (103, 4, 8, True, True), (103, 4, 8, False, True), (100, 3, 7, False, False), (10, 4, 3, False, True),
    (3, 5, 1, False, True),
])
def test_batches_equal_distributed_sampler_with_batch_sampler(n, replicas, batch, drop_last, shuffle):
    images, labels = indexed_images(n)
    for epoch in (0, 3):
        for rank in range(replicas):
            sampler = DistributedSampler(range(n), num_replicas=replicas, rank=rank, shuffle=shuffle,
                                         seed=11, drop_last=drop_last)
            sampler.set_epoch(epoch)
            expected = list(BatchSampler(sampler, batch, drop_last))
            loader = DeviceLoader(images, batch, labels=labels, shuffle=shuffle, seed=11, drop_last=drop_last,
                                  num_replicas=replicas, rank=rank)
            loader.set_epoch(epoch)
            got = [lab.tolist() for _, lab in loader]
            assert got == expected
            assert len(loader) == len(expected)


def test_labels_travel_with_their_images():
    images, labels = indexed_images(50)
    for x, y in DeviceLoader(images, 8, labels=labels, seed=0):
        assert torch.equal(x[:, 0, 0, 0].long(), y % 256)


def test_shards_are_disjoint_per_epoch_and_cover_the_data_when_dropping_the_tail():
    n, replicas = 1000, 4
    for epoch in range(3):
        shards = [set(shard_indices(n, epoch, seed=1, num_replicas=replicas, rank=r, drop_last=True).tolist())
                  for r in range(replicas)]
        assert all(len(a & b) == 0 for i, a in enumerate(shards) for b in shards[i + 1:])
        assert set().union(*shards) == set(range(n))


def test_set_epoch_reshuffles_and_the_same_epoch_repeats():
    images, labels = indexed_images(64)
    loader = DeviceLoader(images, 16, labels=labels, seed=5)
    first = torch.cat([y for _, y in loader])
    again = torch.cat([y for _, y in loader])
    loader.set_epoch(1)
    second = torch.cat([y for _, y in loader])
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(64))


def test_drop_last_drops_only_the_incomplete_batch():
    images, labels = indexed_images(50)
    sizes = [len(y) for _, y in DeviceLoader(images, 16, labels=labels, drop_last=True)]
    assert sizes == [16, 16, 16]
    sizes = [len(y) for _, y in DeviceLoader(images, 16, labels=labels, drop_last=False)]
    assert sizes == [16, 16, 16, 2]


def test_loader_accepts_an_image_dataset():
    train = get_dataset("digits", "train")
    x, y = next(iter(DeviceLoader(train, 32)))
    assert x.dtype == torch.uint8 and x.shape == (32, 1, 8, 8) and y.dtype == torch.int64


def test_bad_loader_arguments_raise_clear_errors():
    images, labels = indexed_images(10)
    with pytest.raises(InputError, match="batch_size"):
        DeviceLoader(images, 64, labels=labels, drop_last=True)
    with pytest.raises(InputError, match="rank"):
        DeviceLoader(images, 2, labels=labels, num_replicas=2, rank=2)
    with pytest.raises(InputError, match="uint8"):
        DeviceLoader(images.float(), 2)
    with pytest.raises(InputError, match="labels"):
        DeviceLoader(images, 2, labels=labels[:5])


def test_loader_streams_an_image_folder_that_does_not_fit_in_memory(tmp_path):
    from PIL import Image

    from collapselab.data import load_imagefolder

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for k in range(3):
            Image.new("L", (4, 4), color=10 * k + (100 if cls == "b" else 0)).save(tmp_path / cls / f"{k}.png")
    streamed = load_imagefolder(tmp_path, max_memory_bytes=0)
    batches = list(DeviceLoader(streamed, 2, seed=0))
    assert len(batches) == 3
    for x, y in batches:
        assert x.dtype == torch.uint8 and x.shape == (2, 1, 4, 4)
        assert torch.equal((x[:, 0, 0, 0] >= 100).long(), y)
