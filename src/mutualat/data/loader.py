"""A loader that keeps a whole split on the training device and augments there, in batches.

As in cifar10-airbench (Jordan 2024): the uint8 images are moved to the device once; each
batch is gathered by index, augmented for the whole batch at once and converted to float
in [0,1]. No worker processes, no per-image Python.

Everything random in an epoch (the order, crop offsets, flips) is drawn up front from a CPU
``torch.Generator`` seeded from ``(seed, epoch)`` alone. So epoch ``e`` is the same batches
whenever it is run, on any device, and a run resumed at ``start_step`` sees exactly the
batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mutualat.data.formats import ArraySplit
from mutualat.errors import ConfigError

AUGMENTATIONS = ("none", "crop_flip")
# Pixel value v as float32 v / 255, divided once on the CPU, correctly rounded. CUDA divides
# by a scalar as a product with its reciprocal, one unit in the last place off for some
# values: a GPU run then saw other inputs than a CPU run of the same images. Other devices
# read this table instead.
_UNIT_TABLE = torch.arange(256, dtype=torch.float32, device="cpu").div(255)
_UNIT_TABLES: dict[torch.device, torch.Tensor] = {}
CROP_PADDING = 4  # the paper's (and the usual CIFAR) random crop: pad 4 pixels with zeros


def crop_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor,
              padding: int = CROP_PADDING) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the input size, and mirror some images.

    images: (B, C, H, W) of any dtype; shifts: (B, 2) integer (row, column) offsets of the
    crop in the padded image, in [0, 2 * padding]; flips: (B,) bool, True = mirror left-right.
    One gather for the whole batch: each output pixel picks its source row and column.
    """
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = shifts[:, 0, None] + torch.arange(h, device=device)  # (B, H)
    cols = shifts[:, 1, None] + torch.arange(w, device=device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a mirrored crop reads right to left
    return padded[
        torch.arange(b, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Float32 images in [0,1]: uint8 ones as value / 255, the same bits on every device;
    float ones only cast to float32.

    On the CPU that is the division itself (IEEE, which keeps the input's memory format);
    elsewhere a lookup in a table the CPU divided, whose result is contiguous.
    """
    if images.dtype != torch.uint8:
        return images.float()
    if images.device.type == "cpu":
        return images.float().div_(255)
    table = _UNIT_TABLES.get(images.device)
    if table is None:
        table = _UNIT_TABLES.setdefault(images.device, _UNIT_TABLE.to(images.device))
    return table.index_select(0, images.flatten().int()).view(images.shape)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends on (seed, epoch) only; SeedSequence decorrelates the pairs."""
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(state))
    return generator


class DeviceLoader:
    """Batches of (x float32 (B, C, H, W) in [0,1], y int64 (B,)) from a split kept on ``device``.

    ``augment``: "none", or "crop_flip" (random crop with 4-pixel zero padding and random
    horizontal flip, for CIFAR). ``drop_last`` drops the final short batch.
    """

    def __init__(self, split: ArraySplit, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = True, augment: str = "none", seed: int = 0,
                 drop_last: bool = False) -> None:
        if augment not in AUGMENTATIONS:
            known = ", ".join(AUGMENTATIONS)
            raise ConfigError(f"unknown augmentation {augment!r}; known: {known}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.num_examples = len(split)
        images = split.images if split.images.flags.writeable else split.images.copy()
        self.images = torch.from_numpy(images).to(self.device)  # uint8: 4x less memory than float
        self.labels = torch.from_numpy(split.labels).to(self.device)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch``, from batch ``start_step`` on (to resume a run)."""
        if not 0 <= start_step <= len(self):
            raise ConfigError(f"start_step must be in [0, {len(self)}], got {start_step}")
        generator = epoch_generator(self.seed, epoch)
        n = self.num_examples
        # Drawn for the whole epoch, in this order, whatever start_step is: skipping batches
        # must not change the random numbers of the batches that follow.
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        shifts = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        return self._batches(order.to(self.device), shifts.to(self.device), flips.to(self.device),
                             start_step)

    def _batches(self, order: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor,
                 start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(start_step, len(self)):
            batch = slice(step * self.batch_size, (step + 1) * self.batch_size)
            index = order[batch]
            x = self.images[index]
            if self.augment == "crop_flip":
                x = crop_flip(x, shifts[batch], flips[batch])
            yield to_unit(x), self.labels[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch 0, always: a training loop calls :meth:`epoch` with the epoch number."""
        return self.epoch(0)
