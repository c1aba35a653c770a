"""Named datasets: where their files are looked for, downloaded to and cached.

``load_dataset(name)`` builds one of the registered datasets (``DATASETS.names()``):

- ``fashion-mnist-embedded``: 10,000 train / 2,000 test Fashion-MNIST images shipped inside
  the package (see ``embedded/README.md``), for tests and CPU-scale runs; no data dir needed.
- ``fashion-mnist``, ``mnist``: the four IDX files, in ``<data_dir>/<name>/``, directly in
  ``<data_dir>``, or torchvision's ``<data_dir>/FashionMNIST/raw`` (``MNIST/raw``).
- ``cifar10``, ``cifar100``: the python pickles, as the official folder or its .tar.gz.
- ``image-folder``: ``path`` names ``<root>/<split>/<class>/<image>`` or a tar of it; the
  decoded arrays are cached under ``<data_dir>/cache`` so the second load is fast.

The canonical sets are downloaded when missing (``download=True``) from their authors'
hosts and checked against the published MD5s (:mod:`.download`). Pixel statistics are those
published for the full sets, or computed from the train split for image folders; models
normalize inside. The file formats are read by :mod:`.formats` and :mod:`.image_folders`;
validation splits and subsets are :mod:`.splits`.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mutualat.data.download import RemoteFile, download_files, where_to_put
from mutualat.data.formats import (
    CIFAR10,
    CIFAR100,
    ArraySplit,
    CifarLayout,
    read_cifar,
    read_idx_split,
)
from mutualat.data.image_folders import read_image_folder_cached
from mutualat.errors import ConfigError, DataError
from mutualat.registry import Registry


@dataclass
class Dataset:
    """A dataset decoded into memory. Pixels stay uint8; ``mean``/``std`` are in [0,1] units."""

    name: str
    train: ArraySplit
    test: ArraySplit
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # training augmentation suited to the data: "crop_flip" or "none"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.train.images.shape
        return c, h, w


DatasetFactory = Callable[[Path, Path | None, bool], Dataset]  # (data root, path, download)
DATASETS: Registry[DatasetFactory] = Registry("dataset")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data root: ``data_dir`` if given, else ``$MUTUALAT_DATA``, else the user cache
    folder (``$XDG_CACHE_HOME`` or ``~/.cache``) ``/mutualat``. Nothing is created here."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("MUTUALAT_DATA"):
        return Path(os.environ["MUTUALAT_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "mutualat"


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    download: bool = True,
) -> Dataset:
    """Load the registered dataset ``name`` (see the module docstring for what each needs).

    ``path`` is required by ``image-folder``; for the canonical sets it names the folder
    (or CIFAR archive) holding the files, which is then used as is, never downloaded into.
    """
    factory = DATASETS.get(name)
    source = None if path is None else Path(path).expanduser()
    return factory(resolve_data_dir(data_dir), source, download)


#: The training augmentation each packaged dataset's loader sets: colour images get the CIFAR
#: crop and flip, grey ones none (an image folder: by its images, :func:`image_folder`).
DEFAULT_AUGMENT = {"fashion-mnist": "none", "fashion-mnist-embedded": "none", "mnist": "none",
                   "cifar10": "crop_flip", "cifar100": "crop_flip"}


def default_augmentation(name: str) -> str:
    """What a run of dataset ``name`` trains with when its config names no augmentation, in
    words a report can print without loading the data."""
    if name == "image-folder":
        return "crop_flip for colour images, none for grey ones"
    return DEFAULT_AUGMENT.get(name, "its loader's")


# --------------------------------------------------------------------------------------------
# MNIST-like IDX sets
# --------------------------------------------------------------------------------------------

_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IdxSpec:
    name: str
    torchvision_folder: str  # torchvision keeps the files in <data_dir>/<this>/raw
    mirrors: tuple[str, ...]  # base URLs
    md5s: tuple[str, ...]  # of the four .gz files, in _IDX_STEMS order
    classes: tuple[str, ...]
    mean: float
    std: float

    def remote_files(self) -> list[RemoteFile]:
        return [
            RemoteFile(f"{stem}.gz", md5, tuple(base + f"{stem}.gz" for base in self.mirrors))
            for stem, md5 in zip(_IDX_STEMS, self.md5s)
        ]


FASHION_MNIST = IdxSpec(
    name="fashion-mnist",
    torchvision_folder="FashionMNIST",
    mirrors=(  # Zalando Research's own bucket, then the files in their GitHub repository
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    md5s=("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
          "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    mean=0.2860,
    std=0.3530,
)
MNIST = IdxSpec(
    name="mnist",
    torchvision_folder="MNIST",
    mirrors=(  # LeCun's page often refuses downloads; PyTorch's copy holds the same files
        "http://yann.lecun.com/exdb/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    md5s=("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
          "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
    classes=tuple(str(d) for d in range(10)),
    mean=0.1307,
    std=0.3081,
)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _check_labels(name: str, split_name: str, split: ArraySplit, num_classes: int) -> None:
    if len(split) and (split.labels.min() < 0 or split.labels.max() >= num_classes):
        raise DataError(
            f"{name}: {split_name} labels run from {split.labels.min()} to "
            f"{split.labels.max()}, expected 0 to {num_classes - 1}"
        )


def _load_idx(spec: IdxSpec, root: Path, path: Path | None, download: bool) -> Dataset:
    folders = [path] if path else [root / spec.name, root, root / spec.torchvision_folder / "raw"]
    found = None
    for folder in folders:
        files = [_idx_file(folder, stem) for stem in _IDX_STEMS]
        if all(files):
            found = files
            break
    if found is None:
        dest = folders[0]
        remote = [f for f in spec.remote_files()
                  if _idx_file(dest, f.name.removesuffix(".gz")) is None]
        where = where_to_put(remote, dest)
        if path is not None:
            raise DataError(
                f"{spec.name}: files missing from {path}; put them (gzipped or not) at:\n{where}"
            )
        if not download:
            looked = ", ".join(str(f) for f in folders)
            raise DataError(
                f"{spec.name}: the four IDX files are in none of {looked}. Pass download=True, "
                f"or put these files (gzipped or not) at:\n{where}"
            )
        download_files(spec.name, remote, dest)
        found = [_idx_file(dest, stem) for stem in _IDX_STEMS]
    train = read_idx_split(found[0], found[1])
    test = read_idx_split(found[2], found[3])
    for split_name, split in (("train", train), ("test", test)):
        _check_labels(spec.name, split_name, split, len(spec.classes))
    return Dataset(spec.name, train, test, list(spec.classes),
                   (spec.mean,), (spec.std,), augment=DEFAULT_AUGMENT[spec.name])


@DATASETS.register("fashion-mnist")
def fashion_mnist(root: Path, path: Path | None, download: bool) -> Dataset:
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 60,000 + 10,000 grey 28x28, 10 classes."""
    return _load_idx(FASHION_MNIST, root, path, download)


@DATASETS.register("mnist")
def mnist(root: Path, path: Path | None, download: bool) -> Dataset:
    """MNIST (LeCun et al. 1998): 60,000 + 10,000 grey 28x28 digits."""
    return _load_idx(MNIST, root, path, download)


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CifarSpec:
    name: str
    layout: CifarLayout
    archive: RemoteFile
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10_SPEC = CifarSpec(
    name="cifar10",
    layout=CIFAR10,
    archive=RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                       ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2471, 0.2435, 0.2616),
)
CIFAR100_SPEC = CifarSpec(
    name="cifar100",
    layout=CIFAR100,
    archive=RemoteFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                       ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",)),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


def _load_cifar(spec: CifarSpec, root: Path, path: Path | None, download: bool) -> Dataset:
    home = root / spec.name
    candidates = [path] if path else [
        home / spec.layout.folder, root / spec.layout.folder,
        home / spec.archive.name, root / spec.archive.name,
    ]
    source = next((c for c in candidates if c.exists()), None)
    if source is None:
        if path is not None:
            raise DataError(f"{path}: not found")
        if not download:
            raise DataError(
                f"{spec.name}: none of {', '.join(map(str, candidates))} exists. "
                f"Pass download=True, or put this file at:\n" + where_to_put([spec.archive], home)
            )
        download_files(spec.name, [spec.archive], home)
        source = home / spec.archive.name
    train, test, classes = read_cifar(source, spec.layout)  # read from the tar, unextracted
    return Dataset(spec.name, train, test, classes, spec.mean, spec.std,
                   augment=DEFAULT_AUGMENT[spec.name])


@DATASETS.register("cifar10")
def cifar10(root: Path, path: Path | None, download: bool) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 colour 32x32, 10 classes."""
    return _load_cifar(CIFAR10_SPEC, root, path, download)


@DATASETS.register("cifar100")
def cifar100(root: Path, path: Path | None, download: bool) -> Dataset:
    """CIFAR-100 (Krizhevsky 2009): 50,000 + 10,000 colour 32x32, 100 fine classes."""
    return _load_cifar(CIFAR100_SPEC, root, path, download)


# --------------------------------------------------------------------------------------------
# The embedded Fashion-MNIST subset
# --------------------------------------------------------------------------------------------

EMBEDDED_FILE = "fashion-mnist-10k.npz"


@DATASETS.register("fashion-mnist-embedded")
def fashion_mnist_embedded(root: Path, path: Path | None, download: bool) -> Dataset:
    """10,000 train / 2,000 test Fashion-MNIST images, class-balanced, shipped in the package.

    Made by ``scripts/make_embedded_data.py``; the MIT notice is in
    ``embedded/LICENSE-fashion-mnist.txt``.
    """
    if path is not None:
        raise ConfigError(
            "dataset 'fashion-mnist-embedded' ships with the package and takes no path"
        )
    resource = importlib.resources.files("mutualat.data") / "embedded" / EMBEDDED_FILE
    with resource.open("rb") as stream, np.load(stream) as arrays:
        train = ArraySplit(arrays["train_images"][:, None], arrays["train_labels"])
        test = ArraySplit(arrays["test_images"][:, None], arrays["test_labels"])
    spec = FASHION_MNIST
    return Dataset("fashion-mnist-embedded", train, test, list(spec.classes),
                   (spec.mean,), (spec.std,), augment=DEFAULT_AUGMENT["fashion-mnist-embedded"])


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std, in [0,1] units, of uint8 (N, C, H, W) images.

    Computed from a 256-bin histogram per channel, so no float copy of the data is made.
    """
    values = np.arange(256) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].ravel(), minlength=256)
        mean = counts @ values / counts.sum()
        means.append(float(mean))
        stds.append(float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum())))
    return tuple(means), tuple(stds)


@DATASETS.register("image-folder")
def image_folder(root: Path, path: Path | None, download: bool) -> Dataset:
    """``path``: ``<root>/<split>/<class>/<image>`` (or a tar of it); see :func:`read_image_folder`.

    Colour images get the CIFAR augmentation (``crop_flip``), grey ones none, as the
    canonical sets do; mean and std come from the train split.
    """
    if path is None:
        raise ConfigError(
            "dataset 'image-folder' needs path=<folder or .tar.gz holding "
            "train/<class>/<image> and test/<class>/<image>>"
        )
    train, test, classes = read_image_folder_cached(path, root / "cache")
    mean, std = channel_stats(train.images)
    augment = "crop_flip" if train.images.shape[1] == 3 else "none"
    return Dataset("image-folder", train, test, classes, mean, std, augment)
