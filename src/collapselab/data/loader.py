"""A device-resident batch iterator: seeded shuffling, drop_last, per-epoch reshuffle, sharding.

The images stay where they are (ideally already on the training device, ``dataset.to("cuda")``);
each batch is one index-select, so there are no worker processes and no host-to-device copies
per step. The order of indices is exactly that of ``torch.utils.data.DistributedSampler`` with
the same ``seed``, ``shuffle`` and ``drop_last`` (a CPU generator seeded with ``seed + epoch``
draws ``randperm(N)``; without ``drop_last`` the list is padded by repeating its start, with
``drop_last`` the tail is dropped so every rank gets the same number; rank r takes every
``num_replicas``-th index starting at r), followed by ``BatchSampler(batch_size, drop_last)``.
So a run on one process and a run on several see the same partition a standard DDP pipeline
would, and ``set_epoch`` must be called each epoch, as with ``DistributedSampler``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from collapselab._validation import InputError
from collapselab.data.datasets import FolderImages, ImageDataset


def shard_indices(n: int, epoch: int = 0, seed: int = 0, shuffle: bool = True, num_replicas: int = 1,
                  rank: int = 0, drop_last: bool = False) -> torch.Tensor:
    """The indices ``DistributedSampler(…)`` yields on ``rank`` in ``epoch`` (int64, CPU)."""
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise InputError(f"rank must be in [0, num_replicas); got rank={rank}, num_replicas={num_replicas}")
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        indices = torch.randperm(n, generator=g)
    else:
        indices = torch.arange(n)
    if drop_last and n % num_replicas != 0:
        num_samples = math.ceil((n - num_replicas) / num_replicas)
    else:
        num_samples = math.ceil(n / num_replicas)
    total = num_samples * num_replicas
    if not drop_last:
        padding = total - n
        if padding > 0:
            reps = math.ceil(padding / max(n, 1))
            indices = torch.cat([indices, indices.repeat(reps)[:padding]])
    else:
        indices = indices[:total]
    return indices[rank:total:num_replicas]


class DeviceLoader:
    """Iterate ``(images, labels)`` batches of a dataset without leaving its device.

    Args:
        data: an :class:`ImageDataset`, or a uint8 image tensor (N, C, H, W).
        labels: int64 (N,) when ``data`` is a tensor (default: all -1).
        batch_size: per-rank batch size.
        shuffle, seed, drop_last: as ``DistributedSampler`` + ``BatchSampler``; ``drop_last``
            drops both the uneven tail across ranks and the last incomplete batch.
        num_replicas, rank: distributed sharding (default: from ``torch.distributed`` if
            initialised, else a single process).
        device: where batches are delivered (default: the images' device).

    Call :meth:`set_epoch` at the start of every epoch to reshuffle.
    """

    def __init__(self, data: ImageDataset | torch.Tensor, batch_size: int, labels: torch.Tensor | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = True,
                 num_replicas: int | None = None, rank: int | None = None,
                 device: str | torch.device | None = None):
        if isinstance(data, ImageDataset):
            images, labels = data.images, data.labels
        elif isinstance(data, torch.Tensor | FolderImages):
            images = data
            if labels is None:
                labels = torch.full((data.shape[0],), -1, dtype=torch.int64, device=getattr(data, "device", None))
        else:
            raise InputError(f"DeviceLoader: expected an ImageDataset or a uint8 tensor, got {type(data).__name__}")
        if images.dtype != torch.uint8 or len(images.shape) != 4:
            raise InputError(f"DeviceLoader: images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise InputError(f"DeviceLoader: labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if int(batch_size) < 1:
            raise InputError(f"DeviceLoader: batch_size must be >= 1, got {batch_size}")
        if num_replicas is None or rank is None:
            dist = torch.distributed
            initialised = dist.is_available() and dist.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if initialised else 1)
            rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.device = torch.device(device) if device is not None else torch.device(getattr(images, "device", "cpu"))
        self.epoch = 0
        shard_indices(1, num_replicas=self.num_replicas, rank=self.rank)  # validates rank
        if len(self.indices()) == 0:
            raise InputError(f"DeviceLoader: {images.shape[0]} samples over {self.num_replicas} rank(s) leave none "
                             "for this rank; use fewer ranks or drop_last=False")
        if drop_last and len(self) == 0:
            raise InputError(f"DeviceLoader: batch_size {batch_size} exceeds the {len(self.indices())} samples of "
                             "this rank and drop_last=True would yield no batch; lower batch_size")

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (same contract as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch (CPU, int64)."""
        return shard_indices(self.images.shape[0], self.epoch, self.seed, self.shuffle, self.num_replicas,
                             self.rank, self.drop_last)

    def __len__(self) -> int:
        n = len(self.indices())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices()
        on_device = isinstance(self.images, torch.Tensor)
        if on_device:
            idx = idx.to(self.images.device)
        stop = (len(idx) // self.batch_size) * self.batch_size if self.drop_last else len(idx)
        for start in range(0, stop, self.batch_size):
            batch = idx[start:start + self.batch_size]
            # index_select: ~20x faster than advanced indexing for a uint8 batch on the CPU
            images = self.images.index_select(0, batch) if on_device else self.images[batch]
            labels = self.labels[batch.to(self.labels.device)]
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


__all__ = ["DeviceLoader", "shard_indices"]
