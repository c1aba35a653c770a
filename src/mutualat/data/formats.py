"""Readers for the formats users already have: IDX files and CIFAR pickles.

Every reader returns uint8 images in NCHW layout and int64 labels (an :class:`ArraySplit`),
and turns a missing, truncated or mis-shaped file into a :class:`DataError` that names the
file and says what was expected. Image folders, the third format, are read by
:mod:`.image_folders`. Nothing here downloads or caches; see :mod:`.datasets`.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from mutualat.errors import DataError

try:  # numpy >= 2 moved the pickle helpers to numpy._core
    import numpy._core.multiarray as _np_multiarray
    import numpy._core.numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    import numpy.core.multiarray as _np_multiarray
    import numpy.core.numeric as _np_numeric


@dataclass
class ArraySplit:
    """One split, decoded once: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(
                f"images must be uint8 of shape (N, C, H, W), got {self.images.dtype} "
                f"of shape {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise DataError(
                f"{len(self.images)} images but labels of shape {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> ArraySplit:
        """The examples at ``index`` (an integer array), in that order."""
        return ArraySplit(self.images[index], self.labels[index])


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_UBYTE = 0x08


def _read_maybe_gzip(path: Path) -> tuple[bytes, bool]:
    """The file's bytes, gunzipped if it starts with the gzip magic; and whether it was whole.

    A truncated .gz is decompressed as far as it goes rather than rejected outright, so that
    the caller can say how many bytes were expected and how many were found.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw, True
    parts = []
    while raw:  # a .gz may hold several members back to back
        stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            parts.append(stream.decompress(raw))
        except zlib.error as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from None
        if not stream.eof:
            return b"".join(parts), False
        raw = stream.unused_data
    return b"".join(parts), True


def read_idx(path: str | os.PathLike, ndim: int, what: str = "values") -> np.ndarray:
    """Read an IDX file of unsigned bytes (raw or gzipped) with ``ndim`` dimensions.

    The format (LeCun et al., the MNIST page): two zero bytes, a type byte (0x08 = ubyte),
    the number of dimensions, each dimension as a big-endian uint32, then the payload.
    ``what`` ("pixels", "labels") only words the error message.
    """
    path = Path(path)
    data, whole = _read_maybe_gzip(path)
    header = 4 + 4 * ndim
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if data[:4] != struct.pack(">I", expected_magic):
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s): magic "
            f"number 0x{data[:4].hex()}, expected 0x{expected_magic:08x}"
        )
    if len(data) < header:
        raise DataError(f"{path}: expected an IDX header of {header} bytes, found {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(data) - header
    if found != expected:
        shape = " x ".join(map(str, dims))
        note = " (the gzip stream is truncated)" if not whole else ""
        raise DataError(
            f"{path}: expected {expected} bytes of {what} after the header ({shape}), "
            f"found {found}{note}"
        )
    if not whole:
        raise DataError(f"{path}: the gzip stream is truncated (its trailer is missing)")
    # bytearray: a writable copy, so torch.from_numpy can share it without a warning.
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=header).reshape(dims)


def read_idx_split(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> ArraySplit:
    """An IDX image file (N, H, W) and its IDX label file (N,) as an ArraySplit (N, 1, H, W)."""
    images = read_idx(images_path, ndim=3, what="pixels")
    labels = read_idx(labels_path, ndim=1, what="labels")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels"
        )
    return ArraySplit(images[:, None], labels)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 python pickles (Krizhevsky 2009)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CifarLayout:
    folder: str  # the folder inside the official archive
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str  # per-batch labels
    names_key: str  # class names in the meta file


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test="test_batch",
    meta="batches.meta",
    label_key="labels",
    names_key="label_names",
)
CIFAR100 = CifarLayout(
    folder="cifar-100-python",
    train=("train",),
    test="test",
    meta="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
)

_CIFAR_SIDE = 32
_CIFAR_ROW = 3 * _CIFAR_SIDE * _CIFAR_SIDE  # 3072 bytes: 1024 red, then green, then blue

# A pickle can run any code it names; the CIFAR files only need numpy arrays, so that is all
# they are allowed to name (the same idea as torch.load(weights_only=True)).
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _np_multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _unpickle(label: str, data: bytes) -> dict[str, object]:
    # latin1: the official files were written by Python 2, whose str held numpy's raw bytes.
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{label}: not a CIFAR python pickle ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{label}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _get(label: str, batch: dict[str, object], key: str) -> object:
    if key not in batch:
        raise DataError(f"{label}: no {key!r} entry (found {sorted(batch)})")
    return batch[key]


def _cifar_batch(label: str, data: bytes, label_key: str) -> ArraySplit:
    batch = _unpickle(label, data)
    rows = _get(label, batch, "data")
    if not (isinstance(rows, np.ndarray) and rows.dtype == np.uint8 and rows.ndim == 2
            and rows.shape[1] == _CIFAR_ROW):
        shape = getattr(rows, "shape", type(rows).__name__)
        raise DataError(
            f"{label}: expected 'data' as uint8 rows of {_CIFAR_ROW} bytes (N, {_CIFAR_ROW}), "
            f"found {getattr(rows, 'dtype', '')} {shape}"
        )
    labels = np.asarray(_get(label, batch, label_key))
    if labels.shape != (len(rows),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{label}: expected {len(rows)} integer labels under {label_key!r}, "
            f"found shape {labels.shape}"
        )
    images = rows.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)
    return ArraySplit(images, labels)


def _read_named_files(source: Path, folder: str, names: list[str]) -> dict[str, tuple[str, bytes]]:
    """``{name: (label for messages, bytes)}`` for each name, from a folder or a tar archive.

    The folder may be ``folder`` itself or hold it; in an archive the files are found under
    ``folder/`` at any depth. A tar is read in one pass (seeking back in a .gz is a re-read).
    """
    found: dict[str, tuple[str, bytes]] = {}
    if source.is_dir():
        base = source / folder if (source / folder).is_dir() else source
        for name in names:
            if (base / name).is_file():
                found[name] = (str(base / name), (base / name).read_bytes())
        where = str(base)
    elif source.is_file():
        try:
            with tarfile.open(source, "r:*") as tar:
                for member in tar:
                    path = PurePosixPath(member.name)
                    if member.isfile() and path.name in names and path.parent.name == folder:
                        data = tar.extractfile(member).read()
                        found[path.name] = (f"{source}:{member.name}", data)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise DataError(f"{source}: not a readable tar archive ({exc})") from None
        where = f"{source} (under {folder}/)"
    else:
        raise DataError(f"{source}: not found")
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}")
    return found


def read_cifar(
    source: str | os.PathLike, layout: CifarLayout
) -> tuple[ArraySplit, ArraySplit, list[str]]:
    """(train, test, class names) from a CIFAR python folder or its .tar.gz, unextracted.

    ``source`` is the batches folder (``cifar-10-batches-py``), a folder holding it, or the
    official archive (``cifar-10-python.tar.gz``); ``layout`` is :data:`CIFAR10` or
    :data:`CIFAR100` (fine labels).
    """
    source = Path(source)
    files = _read_named_files(source, layout.folder, [*layout.train, layout.test, layout.meta])
    batches = [_cifar_batch(*files[name], layout.label_key) for name in layout.train]
    train = ArraySplit(
        np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches])
    )
    test = _cifar_batch(*files[layout.test], layout.label_key)
    meta_label, meta_bytes = files[layout.meta]
    names = _get(meta_label, _unpickle(meta_label, meta_bytes), layout.names_key)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    for split_name, split in (("train", train), ("test", test)):
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(classes)):
            raise DataError(
                f"{source}: {split_name} labels run from {split.labels.min()} to "
                f"{split.labels.max()}, but {meta_label} names {len(classes)} classes"
            )
    return train, test, classes
