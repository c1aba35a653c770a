"""DeviceLoader (determinism, resuming, augmentation) and the seeded split / subset helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mutualat.data import (
    ArraySplit,
    DeviceLoader,
    balanced_indices,
    crop_flip,
    subset,
    to_unit,
    train_val_split,
)
from mutualat.data.loader import _UNIT_TABLE
from mutualat.errors import ConfigError


def make_split(n: int = 70, channels: int = 3, side: int = 8, num_classes: int = 5,
               seed: int = 0) -> ArraySplit:
    rng = np.random.default_rng(seed)
    # No zero pixels, so that the zero padding of a shifted crop shows.
    images = rng.integers(1, 256, (n, channels, side, side), dtype=np.uint8)
    return ArraySplit(images, np.arange(n) % num_classes)


def batches(loader: DeviceLoader, epoch: int,
            start_step: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.epoch(epoch, start_step))


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_same_seed_and_epoch_same_batches(augment: str) -> None:
    split = make_split()
    first = DeviceLoader(split, batch_size=16, augment=augment, seed=3)
    second = DeviceLoader(split, batch_size=16, augment=augment, seed=3)
    batches(first, 0)  # running another epoch first changes nothing
    assert_same(batches(first, 5), batches(second, 5))
    assert_same(list(first), batches(second, 0))


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_epochs_and_seeds_differ(augment: str) -> None:
    split = make_split()
    loader = DeviceLoader(split, batch_size=70, augment=augment, seed=3)
    (x0, y0), (x1, y1) = batches(loader, 0)[0], batches(loader, 1)[0]
    assert not torch.equal(y0, y1) and not torch.equal(x0, x1)
    (x_other, _), = batches(DeviceLoader(split, batch_size=70, augment=augment, seed=4), 0)
    assert not torch.equal(x0, x_other)


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_resume_at_start_step_equals_tail_of_epoch(augment: str) -> None:
    loader = DeviceLoader(make_split(), batch_size=16, augment=augment, seed=1)
    full = batches(loader, 7)
    assert_same(batches(loader, 7, start_step=3), full[3:])
    assert batches(loader, 7, start_step=len(loader)) == []
    with pytest.raises(ConfigError, match="start_step"):
        loader.epoch(7, start_step=len(loader) + 1)


@pytest.mark.parametrize("drop_last", [False, True])
def test_shapes_ranges_and_coverage(drop_last: bool) -> None:
    split = make_split(n=70)
    loader = DeviceLoader(split, batch_size=16, augment="crop_flip", drop_last=drop_last)
    out = batches(loader, 2)
    assert len(loader) == len(out) == (4 if drop_last else 5)
    sizes = [len(y) for _, y in out]
    assert sizes == ([16] * 4 if drop_last else [16, 16, 16, 16, 6])
    for x, y in out:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8)
        assert y.dtype == torch.int64 and x.min() >= 0 and x.max() <= 1
    if not drop_last:  # every example once per epoch
        labels = torch.cat([y for _, y in out]).sort().values
        assert torch.equal(labels, torch.from_numpy(np.sort(split.labels)))


def test_no_shuffle_no_augment_is_the_split_in_order() -> None:
    split = make_split(n=20)
    loader = DeviceLoader(split, batch_size=8, shuffle=False)
    x = torch.cat([x for x, _ in loader.epoch(4)])
    y = torch.cat([y for _, y in loader.epoch(4)])
    assert torch.equal(x, torch.from_numpy(split.images).float() / 255)
    assert torch.equal(y, torch.from_numpy(split.labels))


def test_crop_flip_changes_images_but_keeps_order() -> None:
    split = make_split(n=64)
    plain = batches(DeviceLoader(split, batch_size=64, seed=9), 0)
    augmented = batches(DeviceLoader(split, batch_size=64, augment="crop_flip", seed=9), 0)
    (xp, yp), (xa, ya) = plain[0], augmented[0]
    assert torch.equal(yp, ya)  # the augmentation draws come after the order
    changed = (xp != xa).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.9  # 1 in 162 (shift 4,4 and no flip) stays the same
    assert (xa == 0).any()  # zero padding shows up in shifted crops


def reference_crop_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor,
                        padding: int) -> torch.Tensor:
    """One image at a time, the obvious way."""
    out = []
    h, w = images.shape[2:]
    for image, (dy, dx), flip in zip(images, shifts.tolist(), flips.tolist()):
        padded = torch.nn.functional.pad(image, (padding,) * 4)
        crop = padded[:, dy:dy + h, dx:dx + w]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def test_crop_flip_matches_per_image_reference() -> None:
    images = torch.from_numpy(make_split(n=30, side=6).images)
    generator = torch.Generator().manual_seed(0)
    shifts = torch.randint(0, 9, (30, 2), generator=generator)
    flips = torch.rand(30, generator=generator) < 0.5
    expected = reference_crop_flip(images, shifts, flips, padding=4)
    assert torch.equal(crop_flip(images, shifts, flips), expected)
    centred = torch.full((30, 2), 4)
    assert torch.equal(crop_flip(images, centred, torch.zeros(30, dtype=torch.bool)), images)


def test_loader_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown augmentation 'cutout'; known: none, crop_flip"):
        DeviceLoader(make_split(), batch_size=8, augment="cutout")
    with pytest.raises(ConfigError, match="batch_size"):
        DeviceLoader(make_split(), batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches() -> None:
    split = make_split()
    cpu = batches(DeviceLoader(split, batch_size=16, augment="crop_flip", seed=2), 3)
    gpu = batches(DeviceLoader(split, batch_size=16, device="cuda", augment="crop_flip", seed=2), 3)
    assert gpu[0][0].device.type == "cuda"
    assert_same(cpu, [(x.cpu(), y.cpu()) for x, y in gpu])


def test_to_unit_is_value_over_255_correctly_rounded() -> None:
    values = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    unit = to_unit(values)
    assert unit.dtype == torch.float32 and unit.shape == values.shape
    expected = np.arange(256, dtype=np.float32) / np.float32(255)  # IEEE division, rounded once
    assert np.array_equal(unit.flatten().numpy(), expected)
    assert unit[0, 0, 0, 0] == 0 and unit[-1, 0, -1, -1] == 1
    as_table = _UNIT_TABLE.index_select(0, values.flatten().int()).view(values.shape)
    assert torch.equal(as_table, unit)  # what other devices read is what the CPU computes
    strided = values.repeat(1, 3, 1, 1).to(memory_format=torch.channels_last)[:, :, ::2]
    assert torch.equal(to_unit(strided), strided.float() / 255)
    floats = torch.rand(2, 3, dtype=torch.float64)
    assert torch.equal(to_unit(floats), floats.float())  # float input: only cast


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pixels_have_the_cpu_bits() -> None:
    # CUDA divides by a scalar through its reciprocal: 1 ulp off for some values (seen on an
    # H200, where the loader's batches differed from the CPU's before to_unit).
    values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_unit(values.cuda()).cpu(), to_unit(values))


# --------------------------------------------------------------------------------------------
# train_val_split, subset
# --------------------------------------------------------------------------------------------


def with_ids(labels: np.ndarray) -> ArraySplit:
    """A split whose two-pixel images spell each example's position, to track it."""
    ids = np.arange(len(labels))
    images = np.stack([ids // 256, ids % 256], axis=1).astype(np.uint8).reshape(-1, 1, 1, 2)
    return ArraySplit(images, labels)


def ids_of(split: ArraySplit) -> np.ndarray:
    return split.images[:, 0, 0, 0].astype(np.int64) * 256 + split.images[:, 0, 0, 1]


def test_train_val_split_is_stratified_seeded_and_disjoint() -> None:
    split = with_ids(np.repeat(np.arange(4), [400, 300, 200, 100]))
    train, val = train_val_split(split, 0.2, seed=0)
    assert len(train) == 800 and len(val) == 200
    np.testing.assert_array_equal(np.bincount(val.labels), [80, 60, 40, 20])
    train_ids, val_ids = ids_of(train), ids_of(val)
    assert not set(train_ids) & set(val_ids)
    np.testing.assert_array_equal(np.sort(np.concatenate([train_ids, val_ids])), np.arange(1000))
    np.testing.assert_array_equal(train_ids, np.sort(train_ids))  # original order kept
    np.testing.assert_array_equal(split.labels[val_ids], val.labels)
    np.testing.assert_array_equal(ids_of(train_val_split(split, 0.2, seed=0)[1]), val_ids)
    assert not np.array_equal(ids_of(train_val_split(split, 0.2, seed=1)[1]), val_ids)
    with pytest.raises(ConfigError, match="val_fraction"):
        train_val_split(split, 1.0, seed=0)


def test_subset_is_balanced_seeded_and_ordered() -> None:
    split = make_split(n=100, num_classes=5)
    small = subset(split, 23, seed=0)
    counts = np.bincount(small.labels, minlength=5)
    assert len(small) == 23 and counts.max() - counts.min() <= 1
    assert np.array_equal(subset(split, 23, seed=0).images, small.images)
    assert not np.array_equal(subset(split, 23, seed=1).images, small.images)
    assert subset(split, None, seed=0) is split and subset(split, 1000, seed=0) is split
    with pytest.raises(ConfigError):
        subset(split, 0, seed=0)


def test_balanced_indices_with_a_rare_class() -> None:
    labels = np.array([0] * 50 + [1] * 3 + [2] * 50)
    index = balanced_indices(labels, 30, seed=0)
    assert len(index) == 30 and list(index) == sorted(set(index))
    counts = np.bincount(labels[index])
    assert counts[1] == 3 and sorted(counts) == [3, 13, 14]  # the rare class leaves its share
