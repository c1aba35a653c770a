"""A run's resume checkpoint: one file, written atomically (:mod:`mutualat.files`), so a
process killed at any instant leaves the previous checkpoint or the new one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from mutualat.errors import CheckpointError
from mutualat.files import atomic_write_bytes

CHECKPOINT_FORMAT = 1


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
