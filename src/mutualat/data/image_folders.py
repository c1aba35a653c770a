"""Image folders: ``<root>/<split>/<class>/<image>``, root a folder or a tar of one.

:func:`read_image_folder` decodes every image with Pillow into an :class:`ArraySplit` per
split (a :class:`DataError` names any file that does not fit);
:func:`read_image_folder_cached` keeps the decoded arrays in a cache folder, keyed by the
source's path, sizes and mtimes, so that only the first load pays for the decoding.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from mutualat.data.download import partial_path
from mutualat.data.formats import ArraySplit
from mutualat.errors import DataError

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
    10 s for 60,000 32x32 JPEGs on one core): :func:`read_image_folder_cached` keeps it.
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


# --------------------------------------------------------------------------------------------
# Decoded once and cached
# --------------------------------------------------------------------------------------------

_CACHE_VERSION = 1  # bump when decoding changes, so that older caches are not reused


def _fingerprint(source: Path) -> str:
    """A key that changes when the source moves or changes: its path, sizes and mtimes."""
    digest = hashlib.sha256(f"{_CACHE_VERSION}\n{source}\n".encode())
    if source.is_dir():
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                stat = os.stat(full)
                relative = os.path.relpath(full, source)
                digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    else:
        stat = source.stat()
        digest.update(f"{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _read_cache(cache: Path) -> tuple[ArraySplit, ArraySplit, list[str]] | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as arrays:
            train = ArraySplit(arrays["train_images"], arrays["train_labels"])
            test = ArraySplit(arrays["test_images"], arrays["test_labels"])
            classes = [str(c) for c in arrays["classes"]]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, DataError) as exc:
        warnings.warn(f"ignoring the unreadable cache {cache} ({exc}); decoding again",
                      stacklevel=3)
        return None
    return train, test, classes


def _write_cache(cache: Path, train: ArraySplit, test: ArraySplit, classes: list[str]) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path(cache)
        try:
            # Uncompressed: the cache exists to be fast; decoded photos barely compress anyway.
            with open(tmp, "wb") as stream:
                np.savez(stream, train_images=train.images, train_labels=train.labels,
                         test_images=test.images, test_labels=test.labels,
                         classes=np.array(classes))
            os.replace(tmp, cache)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        warnings.warn(f"could not write the cache {cache} ({exc}); the next load decodes again",
                      stacklevel=3)


def read_image_folder_cached(
    source: Path, cache_dir: Path
) -> tuple[ArraySplit, ArraySplit, list[str]]:
    """:func:`read_image_folder`, with the decoded arrays kept in ``cache_dir`` as an .npz
    keyed by the source's absolute path, size and mtime (every file's, for a folder)."""
    source = source.resolve()
    if not source.exists():
        raise DataError(f"{source}: not found")
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", source.name)
    cache = cache_dir / f"image-folder-{stem}-{_fingerprint(source)}.npz"
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    train, test, classes = read_image_folder(source)
    _write_cache(cache, train, test, classes)
    return train, test, classes
