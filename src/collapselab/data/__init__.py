"""Datasets as uint8 tensors, a device-resident loader, batched augmentations, I-JEPA masks.

See ``docs/data.md``. The main entry points::

    from collapselab.data import get_dataset, DeviceLoader, build_augment
    train = get_dataset("digits", "train")             # ImageDataset: .images uint8 (N, C, H, W)
    loader = DeviceLoader(train.to(device), batch_size=256, seed=0)
    augment = build_augment("simclr")                  # or "byol", "multicrop", or a dict
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:
            view1, view2 = augment(images, generator)
"""

from __future__ import annotations

from collapselab.data.augment import (
    RECIPES,
    MultiViewAugment,
    ViewConfig,
    ViewGroup,
    augment_view,
    build_augment,
    channel_stats,
)
from collapselab.data.datasets import (
    DATA_ENV_VAR,
    DATASETS,
    DatasetSpec,
    FolderImages,
    ImageDataset,
    IntegrityError,
    RemoteFile,
    default_data_dir,
    download_file,
    extract_archive,
    get_dataset,
    is_present,
    list_datasets,
    load_imagefolder,
    md5_file,
    prepare,
)
from collapselab.data.loader import DeviceLoader, shard_indices
from collapselab.data.masks import BlockMasks, MaskConfig, sample_block_masks, select_patches

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "RECIPES",
    "BlockMasks",
    "DatasetSpec",
    "DeviceLoader",
    "FolderImages",
    "ImageDataset",
    "IntegrityError",
    "MaskConfig",
    "MultiViewAugment",
    "RemoteFile",
    "ViewConfig",
    "ViewGroup",
    "augment_view",
    "build_augment",
    "channel_stats",
    "default_data_dir",
    "download_file",
    "extract_archive",
    "get_dataset",
    "is_present",
    "list_datasets",
    "load_imagefolder",
    "md5_file",
    "prepare",
    "sample_block_masks",
    "select_patches",
    "shard_indices",
]
