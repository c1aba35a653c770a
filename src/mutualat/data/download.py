"""Downloads of the canonical datasets' files, verified against their published MD5s.

:func:`download_files` fetches what is missing into a folder, through a temporary file
beside each target that is renamed only once its checksum matches, so a reader never sees
half a file; when every mirror fails, the error says which files to put where by hand.
:func:`fetch` is the one place that touches the network.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from tqdm import tqdm

from mutualat.errors import DataError


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name on disk
    md5: str  # published checksum of the file
    urls: tuple[str, ...]  # tried in order


def fetch(url: str, dest: Path) -> None:
    """Copy ``url`` into the file ``dest``. The one place that touches the network."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        name = Path(urlparse(url).path).name
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}") as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # integrity against the published sums only
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def partial_path(target: Path) -> Path:
    """A fresh name beside ``target`` to write to before renaming: a reader never sees half a
    file, and two processes never share one. (Not tempfile: its files ignore the umask.)"""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")


def where_to_put(files: Sequence[RemoteFile], dest: Path) -> str:
    return "\n".join(f"  {f.urls[0]}\n    -> {dest / f.name}" for f in files)


def _download_verified(url: str, target: Path, md5: str) -> None:
    """Download to a temporary file beside ``target``, check its MD5, then rename it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(target)
    try:
        fetch(url, tmp)
        got = _md5(tmp)
        if got != md5:
            raise DataError(f"md5 {got}, expected {md5} (download deleted)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def download_files(dataset: str, files: Sequence[RemoteFile], dest: Path) -> None:
    """Download each of ``files`` missing from ``dest``, verified; DataError if one fails.

    The error says which files to put where by hand, since a machine that cannot download
    them can usually be given them.
    """
    for k, file in enumerate(files):
        target = dest / file.name
        if target.exists():
            continue
        problems = []
        for url in file.urls:
            try:
                _download_verified(url, target, file.md5)
                break
            except (OSError, http.client.HTTPException, DataError) as exc:
                problems.append(f"  {url}: {exc}")
        else:
            still_missing = [f for f in files[k:] if not (dest / f.name).exists()]
            raise DataError(
                f"could not download {dataset}:\n" + "\n".join(problems)
                + "\nDownload these files by hand and put them at:\n"
                + where_to_put(still_missing, dest)
            )
