"""Readers for the formats users already have: IDX files, CIFAR pickles, image folders.

Every reader returns uint8 images in NCHW layout and int64 labels (an :class:`ArraySplit`),
and turns a missing, truncated or mis-shaped file into a :class:`DataError` that names the
file and says what was expected. Nothing here downloads or caches; see ``datasets.py``.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import struct
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

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


# --------------------------------------------------------------------------------------------
# Image folders: <root>/<split>/<class>/<image>, root a folder or a tar of one
# --------------------------------------------------------------------------------------------

TEST_SPLIT_NAMES = ("test", "val", "valid")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@dataclass(frozen=True)
class _ImageFile:
    split: str
    cls: str
    name: str
    handle: str  # file path, or member name inside the tar


def _list_files(source: Path) -> list[tuple[PurePosixPath, str]]:
    """Relative paths of the regular files under a folder or in a tar, with a handle each."""
    if source.is_dir():
        out = []
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath, name)
                out.append((PurePosixPath(full.relative_to(source).as_posix()), str(full)))
        return out
    if source.is_file():
        try:
            with tarfile.open(source, "r:*") as tar:
                return [(PurePosixPath(m.name), m.name) for m in tar.getmembers() if m.isfile()]
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise DataError(f"{source}: not a readable tar archive ({exc})") from None
    raise DataError(f"{source}: not found")


def _image_files(source: Path) -> tuple[list[_ImageFile], list[_ImageFile], list[str]]:
    """(train files, test files, sorted class names), each list sorted by (class, name)."""
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    # Hidden files and macOS resource forks are no data; other files that are no images are
    # skipped too, but said, so that a folder of unsupported images does not pass unseen.
    visible = [(p, h) for p, h in _list_files(source)
               if not any(part.startswith(".") or part == "__MACOSX" for part in p.parts)]
    paths = [(p, h) for p, h in visible if p.suffix.lower() in extensions]
    skipped = [str(p) for p, _ in visible if p.suffix.lower() not in extensions]
    if skipped:
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        warnings.warn(f"{source}: skipped {len(skipped)} file(s) that are not images: "
                      f"{', '.join(skipped[:3])}{more}", stacklevel=3)
    # A tar of a folder usually holds that folder: strip one shared top level that is no split.
    tops = {p.parts[0] for p, _ in paths}
    if len(tops) == 1 and tops.isdisjoint({"train", *TEST_SPLIT_NAMES}):
        paths = [(PurePosixPath(*p.parts[1:]), h) for p, h in paths if len(p.parts) > 1]
    by_split: dict[str, list[_ImageFile]] = {}
    for p, handle in paths:
        if len(p.parts) == 3:
            split, cls, name = p.parts
            by_split.setdefault(split, []).append(_ImageFile(split, cls, name, handle))
    test_name = next((n for n in TEST_SPLIT_NAMES if n in by_split), None)
    if "train" not in by_split or test_name is None:
        found = ", ".join(sorted(by_split)) or "none"
        raise DataError(
            f"{source}: expected images at train/<class>/<image> and test/<class>/<image> "
            f"('val' or 'valid' also serve as test); splits found: {found}"
        )
    train = sorted(by_split["train"], key=lambda f: (f.cls, f.name))
    test = sorted(by_split[test_name], key=lambda f: (f.cls, f.name))
    classes = sorted({f.cls for f in train})
    unknown = sorted({f.cls for f in test} - set(classes))
    if unknown:
        raise DataError(
            f"{source}: {test_name}/ has classes that train/ lacks: {', '.join(unknown)}"
        )
    return train, test, classes


def _open_images(source: Path, files: list[_ImageFile]) -> Iterator[tuple[int, str, BinaryIO]]:
    """(position in ``files``, label, open file) for every file, in the cheapest read order."""
    if source.is_dir():
        for i, f in enumerate(files):
            with open(f.handle, "rb") as stream:
                yield i, f.handle, stream
        return
    position = {f.handle: i for i, f in enumerate(files)}
    with tarfile.open(source, "r:*") as tar:
        for member in tar:  # archive order: a .tar.gz is read once, front to back
            i = position.get(member.name)
            if i is not None and member.isfile():
                yield i, f"{source}:{member.name}", tar.extractfile(member)


def _decode(label: str, stream: BinaryIO) -> tuple[np.ndarray, bool]:
    """One image as (H, W, 3) uint8 (grey repeated over channels) and whether it was grey."""
    try:
        with Image.open(stream) as image:
            gray = image.mode in _GRAY_MODES
            pixels = np.asarray(image.convert("L" if gray else "RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{label}: not a readable image ({exc})") from None
    return (pixels[:, :, None] if gray else pixels), gray


def read_image_folder(
    source: str | os.PathLike, progress: bool = True
) -> tuple[ArraySplit, ArraySplit, list[str]]:
    """(train, test, class names) from ``<root>/<split>/<class>/<image>``.

    ``source`` is a folder or a .tar / .tar.gz of one (which may wrap it in one top-level
    folder). Any image Pillow reads is accepted; all must share one size. Images are RGB,
    or one grey channel if every image is grey. Classes are the train folders, sorted; the
    test split is ``test``, else ``val``, else ``valid``. Decoding is the slow part (about
    10 s for 60,000 32x32 JPEGs on one core): ``datasets.py`` caches the result.
    """
    source = Path(source)
    train_files, test_files, classes = _image_files(source)
    files = train_files + test_files
    pixels: np.ndarray | None = None
    gray = np.zeros(len(files), dtype=bool)
    first = ""
    bar = tqdm(total=len(files), desc=f"decoding {source.name}", unit="img",
               disable=not progress, mininterval=1.0)
    with bar:
        for i, label, stream in _open_images(source, files):
            image, gray[i] = _decode(label, stream)
            if pixels is None:
                first = label
                pixels = np.zeros((len(files), *image.shape[:2], 3), dtype=np.uint8)
            if image.shape[:2] != pixels.shape[1:3]:
                (h, w), (fh, fw) = image.shape[:2], pixels.shape[1:3]
                raise DataError(
                    f"{label}: image is {w}x{h}, but {first} is {fw}x{fh}; all images of an "
                    f"image folder must share one size"
                )
            pixels[i] = image
            bar.update()
    assert pixels is not None  # _image_files guarantees at least one train image
    channels = pixels[..., :1] if gray.all() else pixels
    images = np.ascontiguousarray(channels.transpose(0, 3, 1, 2))
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[f.cls] for f in files], dtype=np.int64)
    n = len(train_files)
    return (ArraySplit(images[:n], labels[:n]), ArraySplit(images[n:], labels[n:]), classes)
