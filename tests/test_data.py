"""Readers and named datasets, on small files written here in each canonical format."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mutualat.data import (
    DATASETS,
    ArraySplit,
    channel_stats,
    default_augmentation,
    load_dataset,
    read_cifar,
    read_idx,
    read_idx_split,
    read_image_folder,
    resolve_data_dir,
)
from mutualat.data import datasets, download, image_folders
from mutualat.data.download import RemoteFile, download_files
from mutualat.data.formats import CIFAR10, CIFAR100, CifarLayout
from mutualat.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------
# Writers of the canonical formats
# --------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return magic + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def random_images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_idx_set(folder: Path, rng: np.random.Generator, n_train: int = 12, n_test: int = 5,
                  gz: bool = True) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": random_images(rng, n_train, (28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": random_images(rng, n_test, (28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (f"{stem}.gz" if gz else stem), array)
    return arrays


def pickle_batch(path: Path, rows: np.ndarray, labels: list[int], label_key: str,
                 bytes_keys: bool) -> None:
    batch = {label_key: labels, "data": rows, "batch_label": "synthetic"}
    if bytes_keys:  # as Python 3 sees the official files when loaded with encoding="bytes"
        batch = {k.encode(): v for k, v in batch.items()}
    path.write_bytes(pickle.dumps(batch, protocol=2))  # protocol 2, as the official files


def write_cifar(root: Path, layout: CifarLayout, rng: np.random.Generator, num_classes: int,
                per_batch: int = 4,
                bytes_keys: bool = False) -> tuple[ArraySplit, ArraySplit, list[str]]:
    """A CIFAR python folder of ``layout`` with ``per_batch`` images per batch file."""
    folder = root / layout.folder
    folder.mkdir(parents=True)
    splits = []
    for names in (layout.train, (layout.test,)):
        images, labels = [], []
        for name in names:
            rows = random_images(rng, per_batch, (3072,))
            batch_labels = [int(x) for x in rng.integers(0, num_classes, per_batch)]
            pickle_batch(folder / name, rows, batch_labels, layout.label_key, bytes_keys)
            images.append(rows.reshape(-1, 3, 32, 32))
            labels += batch_labels
        splits.append(ArraySplit(np.concatenate(images), np.array(labels)))
    classes = [f"class{k}" for k in range(num_classes)]
    meta = {layout.names_key: [c.encode() for c in classes], "num_cases_per_batch": per_batch}
    (folder / layout.meta).write_bytes(pickle.dumps(meta, protocol=2))
    return splits[0], splits[1], classes


def write_tar(source: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=arcname)
    return archive


def write_image_folder(root: Path, rng: np.random.Generator, fmt: str = "PNG",
                       mode: str = "RGB", test_name: str = "test",
                       size: tuple[int, int] = (6, 5)) -> dict[str, list[tuple[str, np.ndarray]]]:
    """root/<split>/<class>/<k>.<ext>; returns, per split, (class, pixels HWC) in sorted order."""
    channels = 3 if mode == "RGB" else 1
    written: dict[str, list[tuple[str, np.ndarray]]] = {}
    for split, per_class in (("train", 3), (test_name, 2)):
        written[split] = []
        for cls in ("cat", "ant", "bee"):  # not alphabetical on purpose
            (root / split / cls).mkdir(parents=True)
            for k in range(per_class):
                pixels = random_images(rng, 1, (size[1], size[0], channels))[0]
                image = Image.fromarray(pixels if channels == 3 else pixels[:, :, 0], mode)
                image.save(root / split / cls / f"{k:04d}.{fmt.lower()}", fmt)
                written[split].append((cls, pixels))
        written[split].sort(key=lambda item: item[0])  # stable: keeps k order within a class
    return written


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_set(tmp_path, np.random.default_rng(0), gz=gz)
    suffix = ".gz" if gz else ""
    split = read_idx_split(tmp_path / f"train-images-idx3-ubyte{suffix}",
                           tmp_path / f"train-labels-idx1-ubyte{suffix}")
    assert split.images.shape == (12, 1, 28, 28) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int64
    np.testing.assert_array_equal(split.images[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(split.labels, arrays["train-labels-idx1-ubyte"])


def test_idx_truncated_payload_names_file_and_sizes(tmp_path: Path) -> None:
    images = random_images(np.random.default_rng(0), 10, (28, 28))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images)[:-100]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: expected 7840 bytes of "
                                        r"pixels after the header \(10 x 28 x 28\), found 7740"):
        read_idx(path, ndim=3, what="pixels")


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    images = random_images(np.random.default_rng(0), 10, (28, 28))
    data = gzip.compress(idx_bytes(images))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError,
                       match=r"t10k-images-idx3-ubyte\.gz: expected 7840 bytes .*truncated"):
        read_idx(path, ndim=3, what="pixels")
    path.write_bytes(data[:-4])  # every pixel there, the gzip trailer cut
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: the gzip stream is truncated"):
        read_idx(path, ndim=3)


def test_idx_wrong_magic(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: not an IDX file .* magic "
                                        r"number 0x00000801, expected 0x00000803"):
        read_idx(path, ndim=3)  # a label file where images were expected
    path.write_bytes(b"GIF89a" + bytes(20))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: not an IDX file"):
        read_idx(path, ndim=1)


def test_idx_count_mismatch_and_missing_file(tmp_path: Path) -> None:
    images = write_idx(tmp_path / "imgs.gz", np.zeros((4, 28, 28), np.uint8))
    labels = write_idx(tmp_path / "labels.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"imgs\.gz holds 4 images but .*labels\.gz holds 3 labels"):
        read_idx_split(images, labels)
    with pytest.raises(DataError, match="nothing-here.gz: file not found"):
        read_idx(tmp_path / "nothing-here.gz", ndim=1)


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar10_round_trip(tmp_path: Path, as_tar: bool) -> None:
    train, test, classes = write_cifar(tmp_path, CIFAR10, np.random.default_rng(1), 10)
    source = tmp_path / CIFAR10.folder
    if as_tar:
        source = write_tar(source, tmp_path / "cifar-10-python.tar.gz", CIFAR10.folder)
    got_train, got_test, got_classes = read_cifar(source, CIFAR10)
    assert got_train.images.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(got_train.images, train.images)
    np.testing.assert_array_equal(got_train.labels, train.labels)
    np.testing.assert_array_equal(got_test.images, test.images)
    np.testing.assert_array_equal(got_test.labels, test.labels)
    assert got_classes == classes
    # The row layout is 1024 red, 1024 green, 1024 blue, each row-major.
    row = pickle.loads((tmp_path / CIFAR10.folder / "data_batch_1").read_bytes())["data"][0]
    assert got_train.images[0, 1, 0, 0] == row[1024] and got_train.images[0, 2, 31, 31] == row[3071]


def test_cifar100_fine_labels_bytes_keys(tmp_path: Path) -> None:
    train, test, classes = write_cifar(tmp_path, CIFAR100, np.random.default_rng(2), 100,
                                       per_batch=6, bytes_keys=True)
    archive = write_tar(tmp_path / CIFAR100.folder, tmp_path / "cifar-100-python.tar.gz",
                        CIFAR100.folder)
    for source in (tmp_path, archive):  # the folder holding cifar-100-python/, and the archive
        got_train, got_test, got_classes = read_cifar(source, CIFAR100)
        np.testing.assert_array_equal(got_train.images, train.images)
        np.testing.assert_array_equal(got_test.labels, test.labels)
        assert got_classes == classes and len(got_classes) == 100


def test_cifar_misshaped_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path, CIFAR10, np.random.default_rng(3), 10)
    bad = tmp_path / CIFAR10.folder / "data_batch_3"
    pickle_batch(bad, np.zeros((4, 3000), np.uint8), [0, 1, 2, 3], "labels", bytes_keys=False)
    with pytest.raises(DataError,
                       match=r"data_batch_3: expected 'data' as uint8 rows of 3072 bytes"):
        read_cifar(tmp_path / CIFAR10.folder, CIFAR10)
    pickle_batch(bad, np.zeros((4, 3072), np.uint8), [0, 1], "labels", bytes_keys=False)
    with pytest.raises(DataError, match=r"data_batch_3: expected 4 integer labels"):
        read_cifar(tmp_path / CIFAR10.folder, CIFAR10)
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR python pickle"):
        read_cifar(tmp_path / CIFAR10.folder, CIFAR10)


def test_cifar_missing_file_and_label_range(tmp_path: Path) -> None:
    write_cifar(tmp_path, CIFAR10, np.random.default_rng(4), 10)
    folder = tmp_path / CIFAR10.folder
    pickle_batch(folder / "test_batch", np.zeros((1, 3072), np.uint8), [10], "labels", False)
    with pytest.raises(DataError,
                       match=r"test labels run from 10 to 10, but .*batches\.meta names 10"):
        read_cifar(folder, CIFAR10)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="missing test_batch"):
        read_cifar(folder, CIFAR10)
    archive = write_tar(folder, tmp_path / "cifar-10-python.tar.gz", CIFAR10.folder)
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz .*missing test_batch"):
        read_cifar(archive, CIFAR10)


def test_cifar_pickle_may_not_run_code(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    write_cifar(tmp_path, CIFAR10, np.random.default_rng(5), 10)
    meta = tmp_path / CIFAR10.folder / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": Exploit()}))
    with pytest.raises(DataError, match=r"batches\.meta: .*refusing to load .*system"):
        read_cifar(tmp_path / CIFAR10.folder, CIFAR10)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def stacked(items: list[tuple[str, np.ndarray]]) -> np.ndarray:
    return np.stack([pixels for _, pixels in items]).transpose(0, 3, 1, 2)


def test_image_folder_png_round_trip(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path / "root", np.random.default_rng(6))
    train, test, classes = read_image_folder(tmp_path / "root", progress=False)
    assert classes == ["ant", "bee", "cat"]
    assert train.images.shape == (9, 3, 5, 6) and test.images.shape == (6, 3, 5, 6)
    np.testing.assert_array_equal(train.images, stacked(written["train"]))
    np.testing.assert_array_equal(test.images, stacked(written["test"]))
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(test.labels, [0, 0, 1, 1, 2, 2])


def test_image_folder_jpeg_tar_with_top_folder(tmp_path: Path) -> None:
    root = tmp_path / "mydata"
    write_image_folder(root, np.random.default_rng(7), fmt="JPEG", test_name="val")
    (root / "README.txt").write_text("not an image")  # skipped, with a note
    archive = write_tar(root, tmp_path / "mydata.tar.gz", arcname="mydata")
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are not images: mydata/README"):
        from_tar = read_image_folder(archive, progress=False)
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are not images: README"):
        from_dir = read_image_folder(root, progress=False)
    for got, expected in zip(from_tar[:2], from_dir[:2]):
        np.testing.assert_array_equal(got.images, expected.images)
        np.testing.assert_array_equal(got.labels, expected.labels)
    # JPEG is lossy: compare with what Pillow itself decodes.
    first = np.asarray(Image.open(root / "train" / "ant" / "0000.jpeg").convert("RGB"))
    np.testing.assert_array_equal(from_tar[0].images[0], first.transpose(2, 0, 1))
    assert len(from_tar[1]) == 6  # val/ served as the test split



def test_image_folder_says_which_files_it_skipped(tmp_path: Path) -> None:
    """Files that are not images are left out with a one-line note counting them; hidden
    files are left out silently."""
    root = tmp_path / "root"
    write_image_folder(root, np.random.default_rng(10))
    for name in ("a.txt", "b.json", "c.md", "d.csv"):
        (root / "train" / "ant" / name).write_text("not an image")
    (root / "train" / "ant" / ".DS_Store").write_text("hidden")
    with pytest.warns(UserWarning) as caught:
        train, _, _ = read_image_folder(root, progress=False)
    assert len(train) == 9
    notes = [str(w.message) for w in caught]
    assert notes == [f"{root}: skipped 4 file(s) that are not images: train/ant/a.txt, "
                     "train/ant/b.json, train/ant/c.md and 1 more"]

def test_image_folder_grey_and_mixed(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path / "grey", np.random.default_rng(8), mode="L")
    train, test, _ = read_image_folder(tmp_path / "grey", progress=False)
    assert train.images.shape == (9, 1, 5, 6)
    np.testing.assert_array_equal(train.images, stacked(written["train"]))
    # One colour image makes the whole set RGB, grey images repeated over the channels.
    Image.new("RGB", (6, 5), (10, 20, 30)).save(tmp_path / "grey" / "test" / "bee" / "zz.png")
    train, test, _ = read_image_folder(tmp_path / "grey", progress=False)
    assert train.images.shape == (9, 3, 5, 6)
    np.testing.assert_array_equal(train.images[:, 0], train.images[:, 2])
    np.testing.assert_array_equal(test.images[4, :, 0, 0], [10, 20, 30])


def test_image_folder_errors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_image_folder(root, np.random.default_rng(9))
    Image.new("RGB", (7, 5)).save(root / "train" / "bee" / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png: image is 7x5, but .* is 6x5"):
        read_image_folder(root, progress=False)
    (root / "train" / "bee" / "odd.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"odd\.png: not a readable image"):
        read_image_folder(root, progress=False)
    (root / "train" / "bee" / "odd.png").unlink()
    (root / "test" / "wasp").mkdir()
    Image.new("RGB", (6, 5)).save(root / "test" / "wasp" / "0.png")
    with pytest.raises(DataError, match="test/ has classes that train/ lacks: wasp"):
        read_image_folder(root, progress=False)
    with pytest.raises(DataError, match=r"expected images at train/<class>/<image> .* found: none"):
        read_image_folder(root / "train" / "ant", progress=False)


# --------------------------------------------------------------------------------------------
# Named datasets
# --------------------------------------------------------------------------------------------


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data dir holding every canonical set in its usual layout, tiny."""
    rng = np.random.default_rng(10)
    root = tmp_path / "data"
    write_idx_set(root / "fashion-mnist", rng)
    write_idx_set(root / "MNIST" / "raw", rng, gz=False)  # torchvision's layout
    write_cifar(root / "cifar10", CIFAR10, rng, 10)
    write_cifar(root / "scratch", CIFAR100, rng, 100)
    write_tar(root / "scratch" / CIFAR100.folder, root / "cifar-100-python.tar.gz", CIFAR100.folder)
    write_image_folder(root / "folder", rng)
    return root


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_loads(data_root: Path, name: str) -> None:
    path = data_root / "folder" if name == "image-folder" else None
    data = load_dataset(name, data_dir=data_root, path=path, download=False)
    assert data.name == name
    for split in (data.train, data.test):
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
        assert split.images.shape[1:] == data.input_shape and len(split) > 0
        assert 0 <= split.labels.min() and split.labels.max() < data.num_classes
    assert len(data.mean) == len(data.std) == data.input_shape[0]
    assert data.augment == ("crop_flip" if data.input_shape[0] == 3 else "none")
    # what a report says of a run of it without loading the data
    said = default_augmentation(name)
    assert said == data.augment or (name == "image-folder" and data.augment in said)


def test_idx_layouts_and_paths(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path / "flat", np.random.default_rng(11))  # files right in data_dir
    data = load_dataset("fashion-mnist", data_dir=tmp_path / "flat", download=False)
    np.testing.assert_array_equal(data.test.images[:, 0], arrays["t10k-images-idx3-ubyte"])
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert load_dataset("mnist", path=tmp_path / "flat").train.images.shape == (12, 1, 28, 28)


def test_unknown_name_and_missing_path() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'; known: cifar10, cifar100"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="needs path="):
        load_dataset("image-folder")
    with pytest.raises(ConfigError, match="takes no path"):
        load_dataset("fashion-mnist-embedded", path="x")


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert "Pass download=True" in message
    for stem in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert str(tmp_path / "fashion-mnist" / f"{stem}.gz") in message
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_offline_download_says_what_to_put_where(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, dest: Path) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download, "fetch", offline)
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(info.value)
    assert message.startswith("could not download fashion-mnist")
    for spec in datasets.FASHION_MNIST.remote_files():
        assert f"{spec.urls[0]}\n    -> {tmp_path / 'fashion-mnist' / spec.name}" in message
    with pytest.raises(DataError, match=r"(?s)kriz/cifar-100-python\.tar\.gz\n    -> .*cifar100"):
        load_dataset("cifar100", data_dir=tmp_path)
    assert not list((tmp_path / "fashion-mnist").iterdir())  # no partial files left


def test_download_verifies_and_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"the real bytes"
    served = {"https://a.example/f.bin": b"corrupted", "https://b.example/f.bin": payload}
    monkeypatch.setattr(download, "fetch", lambda url, dest: dest.write_bytes(served[url]))
    good_md5 = hashlib.md5(payload).hexdigest()
    file = RemoteFile("f.bin", good_md5, tuple(served))
    download_files("demo", [file], tmp_path)  # the first mirror's file is bad, the second's good
    assert (tmp_path / "f.bin").read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]

    bad = RemoteFile("g.bin", "0" * 32, ("https://a.example/f.bin",))
    with pytest.raises(DataError, match=r"md5 [0-9a-f]{32}, expected 0{32} \(download deleted\)"):
        download_files("demo", [bad], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_image_folder_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "imgs"
    write_image_folder(source, np.random.default_rng(12))
    archive = write_tar(source, tmp_path / "imgs.tar", arcname="imgs")
    first = load_dataset("image-folder", data_dir=tmp_path / "data", path=archive)
    assert len(list((tmp_path / "data" / "cache").glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    with monkeypatch.context() as patch:
        patch.setattr(image_folders, "read_image_folder", no_decoding)
        second = load_dataset("image-folder", data_dir=tmp_path / "data", path=archive)
    np.testing.assert_array_equal(first.train.images, second.train.images)
    assert first.classes == second.classes and first.mean == second.mean

    os.utime(archive, ns=(0, 0))  # a changed source is decoded again, into a new cache entry
    load_dataset("image-folder", data_dir=tmp_path / "data", path=archive)
    assert len(list((tmp_path / "data" / "cache").glob("*.npz"))) == 2


def test_channel_stats_exact() -> None:
    images = np.random.default_rng(13).integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    mean, std = channel_stats(images)
    pixels = images.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(axis=1), atol=5e-5)
    np.testing.assert_allclose(std, pixels.std(axis=1), atol=5e-5)


def test_resolve_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUTUALAT_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("MUTUALAT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(None) == tmp_path / "xdg" / "mutualat"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_dir(None) == Path.home() / ".cache" / "mutualat"


# --------------------------------------------------------------------------------------------
# The embedded subset
# --------------------------------------------------------------------------------------------


def test_embedded_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUTUALAT_DATA", str(tmp_path / "does-not-exist"))
    data = load_dataset("fashion-mnist-embedded", download=False)
    assert data.train.images.shape == (10000, 1, 28, 28)
    assert data.test.images.shape == (2000, 1, 28, 28)
    assert data.train.images.dtype == np.uint8 and data.train.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(data.train.labels), [1000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test.labels), [200] * 10)
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28) and data.augment == "none"
    assert 0.2 < data.train.images.mean() / 255 < 0.4  # real clothes, not noise or zeros
    assert not (tmp_path / "does-not-exist").exists()


def test_embedded_files_ship_with_license() -> None:
    folder = Path(datasets.__file__).parent / "embedded"
    notice = (folder / "LICENSE-fashion-mnist.txt").read_text()
    assert "MIT" in notice and "Copyright (c) 2017 Zalando SE" in notice
    assert "scripts/make_embedded_data.py" in (folder / "README.md").read_text()
    assert (folder / datasets.EMBEDDED_FILE).stat().st_size < 6_000_000
