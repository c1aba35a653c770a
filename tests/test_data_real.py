"""The real data files in shared/data, when this checkout has them beside it.

Set MUTUALAT_SHARED_DATA to point elsewhere. The CIFAR-10 JPEG test decodes 60,000 images
(about 10 s on one core, then a cache load under a second): run it with ``-m slow``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from mutualat.data import load_dataset

SHARED = Path(os.environ.get("MUTUALAT_SHARED_DATA")
              or Path(__file__).resolve().parents[2] / "shared" / "data")
FASHION = SHARED / "fashion-mnist"
CIFAR_JPEG = SHARED / "cifar10-jpeg.tar.gz"

needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason=f"no Fashion-MNIST at {FASHION}")


@needs_fashion
def test_fashion_mnist_full() -> None:
    data = load_dataset("fashion-mnist", data_dir=SHARED, download=False)
    assert data.train.images.shape == (60000, 1, 28, 28)
    assert data.test.images.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(data.train.labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test.labels), [1000] * 10)
    assert data.train.labels.min() == 0 and data.train.labels.max() == 9
    # The published statistics, which the dataset carries, are those of these pixels.
    assert abs(data.train.images.mean() / 255 - data.mean[0]) < 1e-3


@needs_fashion
def test_embedded_subset_is_taken_from_the_real_files() -> None:
    from mutualat.data import datasets

    full = load_dataset("fashion-mnist", path=FASHION, download=False)
    embedded = load_dataset("fashion-mnist-embedded")
    resource = Path(datasets.__file__).parent / "embedded" / datasets.EMBEDDED_FILE
    with np.load(resource) as arrays:
        train_index, test_index = arrays["train_index"], arrays["test_index"]
    np.testing.assert_array_equal(embedded.train.images, full.train.images[train_index])
    np.testing.assert_array_equal(embedded.train.labels, full.train.labels[train_index])
    np.testing.assert_array_equal(embedded.test.images, full.test.images[test_index])
    np.testing.assert_array_equal(embedded.test.labels, full.test.labels[test_index])


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason=f"no {CIFAR_JPEG}")
def test_cifar10_jpeg_folder_decodes_then_loads_from_cache(tmp_path: Path) -> None:
    start = time.perf_counter()
    data = load_dataset("image-folder", data_dir=tmp_path, path=CIFAR_JPEG)
    decoded = time.perf_counter() - start
    assert data.train.images.shape == (50000, 3, 32, 32)
    assert data.test.images.shape == (10000, 3, 32, 32)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck"]
    np.testing.assert_array_equal(np.bincount(data.train.labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test.labels), [1000] * 10)
    assert data.augment == "crop_flip"
    # JPEG moves pixels a little: the statistics stay near CIFAR-10's published ones.
    np.testing.assert_allclose(data.mean, (0.4914, 0.4822, 0.4465), atol=0.01)

    start = time.perf_counter()
    again = load_dataset("image-folder", data_dir=tmp_path, path=CIFAR_JPEG)
    cached = time.perf_counter() - start
    np.testing.assert_array_equal(again.test.images, data.test.images)
    assert cached < decoded / 3, f"cache load {cached:.1f} s vs decode {decoded:.1f} s"
