"""Atomic writes: a temporary file in the same folder, fsync, then rename.

A process killed at any instant (``kill -9`` included) leaves either the previous file or the
new one, never a torn one.
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path
from typing import Any

import torch

from mutualat.errors import CheckpointError

CHECKPOINT_FORMAT = 1


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically, with the mode a plain ``open`` gives (0644
    under umask 022): ``tempfile.mkstemp`` would create 0600, and the rename would keep it,
    so results, configs and checkpoints were unreadable to the group, unlike model files."""
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


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format_version": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume")
    try:
        # Only tensors and plain containers are stored, so the safe loader suffices.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {exc}") from None
    if not isinstance(state, dict) or state.get("format_version") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a mutualat checkpoint of format {CHECKPOINT_FORMAT}")
    return state
