"""Atomic writes: a temporary file in the same folder, fsync, then rename.

A process killed at any instant (``kill -9`` included) leaves either the previous file or the
new one, never a torn one. Checkpoints, model files, configs, run and study records,
evaluation results, an archive's copies and a Markdown document's section rewritten in
place are written so (figures are not: matplotlib writes them).

And :func:`hold_lock`: the advisory lock that keeps a second process out of a folder in use
(a run folder while it trains, an evaluation folder while it is evaluated into, a study
folder while its scheduler runs).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path
from typing import IO

from mutualat.errors import ConfigError

logger = logging.getLogger(__name__)

#: The file :func:`hold_lock` locks inside a folder in use.
LOCK = ".lock"


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (missing parent folders are made), with the
    mode a plain ``open`` gives (0644 under umask 022): ``tempfile.mkstemp`` would create
    0600, and the rename would keep it, so results, configs and checkpoints were unreadable
    to the group, unlike model files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name no other writer picks ("x" refuses an existing file), matching the ".NAME.*.tmp"
    # pattern that a resumed run clears after a kill.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def hold_lock(folder: Path, busy: str) -> IO | None:
    """Hold an exclusive advisory lock on ``folder``'s :data:`LOCK` file (made, with the
    folder, if missing) for as long as the returned handle stays open; the OS drops it when
    the process ends, however it ends, so a kill never leaves a stale lock. Held elsewhere
    (another process, or another handle of this one): :class:`ConfigError` with the message
    ``busy``.
    None, with a warning, where the platform (Windows) or the filesystem (some network
    mounts) has no ``flock``: no lock, rather than no run."""
    try:
        import fcntl
    except ImportError:
        logger.warning(f"no fcntl on this platform: {folder} is not locked, so make sure no "
                       "other process uses it")
        return None
    path = Path(folder) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(busy) from None
        logger.warning(f"cannot lock {path} ({exc.strerror}): going on without a lock, so make "
                       "sure no other process uses this folder")
        return None
    return handle
