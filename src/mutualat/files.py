"""Atomic writes: a temporary file in the same folder, fsync, then rename.

A process killed at any instant (``kill -9`` included) leaves either the previous file or the
new one, never a torn one. Checkpoints, model files, configs, run and study records,
evaluation results, an archive's copies and a Markdown document's section rewritten in
place are written so (figures are not: matplotlib writes them).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


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
