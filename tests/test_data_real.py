"""The real data files in shared/data, when this checkout has them beside it.

Set MUTUALAT_SHARED_DATA to point elsewhere. The CIFAR-10 JPEG test decodes 60,000 images
(about 10 s on one core), then loads them again from the cache.
"""

from __future__ import annotations

import os
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


@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason=f"no {CIFAR_JPEG}")
def test_cifar10_jpeg_folder_decodes_then_loads_from_cache(tmp_path: Path, monkeypatch) -> None:
    from mutualat.data import image_folders

    data = load_dataset("image-folder", data_dir=tmp_path, path=CIFAR_JPEG)
    assert data.train.images.shape == (50000, 3, 32, 32)
    assert data.test.images.shape == (10000, 3, 32, 32)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck"]
    np.testing.assert_array_equal(np.bincount(data.train.labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test.labels), [1000] * 10)
    assert data.augment == "crop_flip"
    # JPEG moves pixels a little: the statistics stay near CIFAR-10's published ones.
    np.testing.assert_allclose(data.mean, (0.4914, 0.4822, 0.4465), atol=0.01)

    # The second load comes from the cache: the archive is not decoded again.
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded the archive again instead of reading the cache")

    monkeypatch.setattr(image_folders, "read_image_folder", no_decoding)
    again = load_dataset("image-folder", data_dir=tmp_path, path=CIFAR_JPEG)
    np.testing.assert_array_equal(again.test.images, data.test.images)
    np.testing.assert_array_equal(again.train.labels, data.train.labels)


@pytest.mark.slow
@needs_fashion
def test_one_epoch_of_at_on_the_full_fashion_mnist_from_the_command_line(tmp_path: Path) -> None:
    """The README's first training command, one epoch, on all 48,000 training images (the
    other 12,000 are the validation split): a checkpoint, metrics, a loadable model, and
    the images/s printed. A few minutes on one core with tinycnn (smallcnn: about 10)."""
    import json
    import subprocess
    import sys

    import torch

    import mutualat

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "at-fmnist"
    run = subprocess.run(
        [sys.executable, "-m", "mutualat", "train", "--config",
         str(repo / "configs" / "at-fashion-mnist.yaml"), "--data-dir", str(SHARED),
         "--out", str(out), "--set", "optim.epochs=1", "--set", "models.0.name=tinycnn",
         "--set", "progress=false", "--device", "cpu"],
        capture_output=True, text=True, timeout=3600,
    )
    assert run.returncode == 0, run.stderr
    print(run.stdout)
    assert "epoch 1/1:" in run.stdout and "img/s" in run.stdout
    for name in ("checkpoint.pt", "metrics.jsonl", "config.yaml", "results.json",
                 "models/model.safetensors"):
        assert (out / name).is_file(), name
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"event": "epoch"' in line]
    assert len(epochs) == 1 and epochs[0]["img_per_s"] > 0
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"event": "step"' in line]
    assert len(steps) == 48000 // 128  # the whole training split, drop_last
    model = mutualat.load_model(out / "models" / "model.safetensors")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
