"""Datasets as uint8 arrays decoded once, and a loader that batches them on the device.

    from mutualat.data import load_dataset, train_val_split, DeviceLoader

    data = load_dataset("cifar10")                      # or "fashion-mnist-embedded", ...
    train, val = train_val_split(data.train, val_fraction=0.2, seed=0)
    loader = DeviceLoader(train, batch_size=128, device="cuda", augment=data.augment, seed=0)
    for x, y in loader.epoch(epoch):                    # x float in [0,1], (B, C, H, W)
        ...
"""

from mutualat.data.datasets import (DATASETS, Dataset, channel_stats, default_augmentation, load_dataset,
                                    resolve_data_dir)
from mutualat.data.formats import ArraySplit, read_cifar, read_idx, read_idx_split
from mutualat.data.image_folders import read_image_folder
from mutualat.data.loader import AUGMENTATIONS, DeviceLoader, crop_flip, to_unit
from mutualat.data.splits import balanced_indices, subset, train_val_split

__all__ = [
    "AUGMENTATIONS",
    "ArraySplit",
    "DATASETS",
    "Dataset",
    "DeviceLoader",
    "balanced_indices",
    "channel_stats",
    "crop_flip",
    "default_augmentation",
    "load_dataset",
    "read_cifar",
    "read_idx",
    "read_idx_split",
    "read_image_folder",
    "resolve_data_dir",
    "subset",
    "to_unit",
    "train_val_split",
]
