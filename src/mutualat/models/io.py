"""Saved model files: one ``.safetensors`` file of weights plus a JSON record of how to rebuild.

The record is stored in the safetensors header metadata under the key ``"mutualat"``::

    {"format_version": 1, "model": model.spec, **meta}

where ``model.spec`` is what :func:`~mutualat.models.create_model` recorded and ``meta`` is
whatever the caller adds (dataset, classes, threat model, method, role, epoch, metrics...).
A file is self-contained: :func:`load_model` needs nothing but the path. Safetensors files
hold tensors only, so loading one never executes code (unlike a pickled ``torch.save``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from mutualat.errors import CheckpointError, ConfigError
from mutualat.files import atomic_write_bytes
from mutualat.models.factory import MODELS, create_model

FORMAT_VERSION = 1
METADATA_KEY = "mutualat"
_RESERVED = ("format_version", "model")


def save_model(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Write ``model``'s weights and its spec (plus ``meta``) to one safetensors file.

    ``model`` must come from :func:`create_model` (it needs ``model.spec``); ``meta`` must be
    JSON-serializable and must not use the keys ``format_version`` or ``model``. The file is
    written atomically: a temporary file in the same folder, fsync, then ``os.replace``, so a
    crash never leaves a half-written model under ``path``. Missing parent folders are made.
    """
    model = _unwrap(model)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        raise TypeError("save_model needs a model built by create_model (it has no .spec dict)")
    meta = dict(meta or {})
    clash = [k for k in _RESERVED if k in meta]
    if clash:
        raise ValueError(f"meta may not use the reserved keys {clash}")
    record = {"format_version": FORMAT_VERSION, "model": spec, **meta}
    text = _to_json(record)
    # safetensors refuses non-contiguous tensors and tensors sharing storage; a state dict of
    # our models has no tied weights, so contiguous CPU copies are all that is needed.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}

    # Serialized in memory and written with open(): safetensors' save_file and
    # tempfile.mkstemp both create 0600 files, a mode that would stick to the final file.
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata={METADATA_KEY: text}))
    _fsync_dir(path.parent)


def read_model_meta(path: str | os.PathLike) -> dict:
    """The JSON record of a saved model: ``{"format_version", "model": spec, **meta}``.

    Reads the header only. Raises :class:`CheckpointError` if the file is missing, is not a
    (complete) safetensors file, or carries no mutualat record.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header_meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors model file (truncated or corrupt?): {exc}"
        ) from None
    if METADATA_KEY not in header_meta:
        raise CheckpointError(
            f"{path} is a safetensors file without mutualat metadata; it was not written by "
            "mutualat.save_model, so the architecture to rebuild is unknown"
        )
    try:
        record = json.loads(header_meta[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the mutualat metadata is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("model"), dict):
        raise CheckpointError(f"{path}: the mutualat metadata has no model spec")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has model file format version {version!r}; this mutualat reads version "
            f"{FORMAT_VERSION} (a newer mutualat may have written it)"
        )
    return record


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model and load its weights; returns it in eval mode on ``device``.

    The result is a plain ``nn.Module`` mapping [0,1] images ``(B, C, H, W)`` to logits
    ``(B, K)`` (its normalization is inside). Raises :class:`CheckpointError` for a missing,
    corrupt or foreign file, an architecture this version does not know, or weights that do
    not fit the architecture.
    """
    record = read_model_meta(path)
    spec = record["model"]
    name = spec.get("name")
    if name not in MODELS:
        raise CheckpointError(
            f"{path} holds a model of architecture {name!r}, which this version of mutualat "
            f"does not know; known: {', '.join(MODELS.names())}"
        )
    # The record alone must not decide how much memory is taken (a forged header could claim
    # a network of terabytes): the architecture is first built on the meta device, which
    # allocates nothing, and its shapes are checked against the tensors the file holds.
    try:
        with torch.device("meta"):
            skeleton = create_model(**spec)
    except (ConfigError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild its {name!r} model: {exc}") from None
    _check_fit(path, name, _shapes(skeleton.state_dict()), _file_shapes(path))
    model = create_model(**spec)  # now known to be the size of the file's weights
    _load_state(model, path)
    return model.eval().to(device)


def load_weights_into(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load a saved file's weights into an existing ``model``; returns the file's record.

    The file's architecture spec must equal ``model.spec`` (name, classes, channels, input
    size, normalization, options), else :class:`CheckpointError`. The model's train/eval mode
    and device are left as they are.
    """
    model = _unwrap(model)
    record = read_model_meta(path)
    saved = record["model"]
    spec = getattr(model, "spec", None)
    if spec is not None:
        current = json.loads(_to_json(spec))  # compare as JSON: tuples and lists alike
        if current != saved:
            differs = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise CheckpointError(
                f"{path}: checkpoint is {_describe(saved)}, model is {_describe(current)} "
                f"(they differ in: {', '.join(differs)})"
            )
    _load_state(model, path)
    return record


def _load_state(model: nn.Module, path: str | os.PathLike) -> None:
    """Load the file's weights into ``model`` once the header says that they fit it."""
    name = getattr(model, "spec", {}).get("name", type(model).__name__)
    _check_fit(path, name, _shapes(model.state_dict()), _file_shapes(path))
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read the weights: {exc}") from None
    model.load_state_dict(tensors, strict=True)


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _file_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, read from the safetensors header (no tensor is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read the weights: {exc}") from None


def _check_fit(path: str | os.PathLike, name: str, expected: dict[str, tuple[int, ...]],
               found: dict[str, tuple[int, ...]]) -> None:
    """A :class:`CheckpointError` naming the keys where the file's tensors (``found``) and
    the architecture's (``expected``) differ."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(
        f"{k} (file {found[k]}, model {expected[k]})"
        for k in set(expected) & set(found)
        if found[k] != expected[k]
    )
    problems = [
        f"{label}: {_first(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("mis-shaped", misshaped))
        if items
    ]
    if problems:
        raise CheckpointError(
            f"{path}: the weights do not fit a {name!r} model; " + "; ".join(problems)
        )


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps the model and prefixes its state-dict keys with "_orig_mod.";
    # files hold the plain model's weights.
    return getattr(model, "_orig_mod", model)


def _first(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _describe(spec: Mapping[str, Any]) -> str:
    return (
        f"{spec.get('name')} with {spec.get('num_classes')} classes, "
        f"{spec.get('in_channels')} input channels"
    )


def _to_json(record: dict) -> str:
    try:
        return json.dumps(record)
    except (TypeError, ValueError):
        # Name the offending top-level entry; json's own message only names the type.
        for key, value in record.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"model file metadata must be JSON-serializable; {key!r} is not: {exc}"
                ) from None
        raise


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable. Directories cannot be opened for fsync on Windows.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
