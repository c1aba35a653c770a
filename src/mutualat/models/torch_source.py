"""``torch:FILE``: a plain PyTorch state dict (``.pt``, ``.pth``, ``.safetensors``) in one of our
architectures.

``torch:teacher.pt?arch=wrn34_10&mean=0&std=1`` reads the file with
``torch.load(weights_only=True)`` (tensors and plain containers only: a pickle that would run
code is refused) or safetensors, finds the state dict inside a checkpoint dict, strips
wrapper prefixes, maps the key layout onto ours (:mod:`mutualat.models.layouts`) and builds
``arch`` around it. The number of classes and input channels are read from the weights
unless ``classes=``/``channels=`` say otherwise. Anything that does not fit is named key by
key.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mutualat.errors import CheckpointError, ConfigError
from mutualat.models.factory import MODELS, create_model
from mutualat.models.layouts import LAYOUTS, Converted, candidates, load_converted, to_our_layout
from mutualat.models.sources import (
    FORMAT_VERSION,
    LoadedModel,
    ModelSource,
    SourceKind,
    register_source,
    resolve_normalization,
)

#: Entries of a checkpoint dict that commonly hold the state dict, tried in this order.
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "state", "ema")
SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt", ".tar")


def read_state_file(path: str | Path, key: str | None = None, where: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a safetensors file, or a ``torch.save`` of a state dict or
    of a checkpoint dict holding one (under ``key``, else the first of :data:`STATE_KEYS`)."""
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise CheckpointError(f"{where}: no file at {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{where}: not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{where}: the file holds Python objects besides tensors, which the safe loader "
            f"(torch.load weights_only=True) refuses ({str(exc).splitlines()[0]}). If you trust "
            "it, re-save its tensors: torch.save(torch.load(FILE, weights_only=False)"
            "['state_dict'], 'weights.pt')"
        ) from None
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{where}: not a readable PyTorch file: {exc}") from None
    return _find_state(obj, key, where)


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _find_state(obj: Any, key: str | None, where: str) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            top = ", ".join(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{where}: no entry {key!r} (the file holds: {top})")
        obj = obj[key]
        if not _is_state(obj):
            raise CheckpointError(f"{where}: entry {key!r} is not a mapping of names to tensors")
        return dict(obj)
    if _is_state(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for name in STATE_KEYS:
            if _is_state(obj.get(name)):
                return dict(obj[name])
        top = ", ".join(map(str, obj))
        raise CheckpointError(
            f"{where}: no state dict found (the file holds: {top}); name its entry with key=NAME"
        )
    raise CheckpointError(f"{where}: holds a {type(obj).__name__}, not a state dict")


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), remembered while its size and modification time stay:
    a study checks its models' files each time it looks for work."""
    stat = Path(path).stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def file_digest(path: str | Path) -> str:
    """sha256 of a file (first 16 hex digits): which weights a report is about, or which
    file a run's member started from."""
    return file_sha256(path)[:16]


def _first_and_last(model: nn.Module) -> tuple[str | None, str | None]:
    """Names of the first convolution (reads the input channels) and the last linear layer
    (writes the classes)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (convs[0] if convs else None), (linears[-1] if linears else None)


def _inferred(source: ModelSource, tensors: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(classes, channels): the options if given, else read from the weights' first conv and
    last linear layer (as the architecture names them), else 10 and 3."""
    opts = source.options
    arch_name = opts.arch
    with torch.device("meta"):  # names only: no memory, no initialization cost
        probe = create_model(arch_name, **opts.extra)
    first, last = _first_and_last(probe)
    classes, channels = opts.classes, opts.channels
    for _, converted in candidates(tensors, opts.layout):
        t = converted.tensors
        if classes is None and last and f"{last}.weight" in t and t[f"{last}.weight"].dim() == 2:
            classes = int(t[f"{last}.weight"].shape[0])
        if channels is None and first and f"{first}.weight" in t and t[f"{first}.weight"].dim() == 4:
            channels = int(t[f"{first}.weight"].shape[1])
    return classes or 10, channels or 3


def build(source: ModelSource, tensors: Mapping[str, torch.Tensor],
          described: dict[str, Any]) -> LoadedModel:
    """Our architecture ``source.options.arch`` with ``tensors`` (in any known layout) loaded."""
    opts, where = source.options, source.text
    if opts.arch is None:
        raise ConfigError(
            f"{where}: say the architecture, arch=NAME (or --arch NAME); one of "
            f"{', '.join(MODELS.names())}"
        )
    MODELS.get(opts.arch)
    classes, channels = _inferred(source, tensors)
    size = opts.size or 32
    with torch.device("meta"):
        probe = create_model(opts.arch, num_classes=classes, in_channels=channels,
                             input_size=size, **opts.extra)
    layout, converted = to_our_layout(tensors, probe.state_dict(), opts.layout, where)
    mean, std = resolve_normalization(source, converted.mean, converted.std, channels)
    model = create_model(opts.arch, num_classes=classes, in_channels=channels, input_size=size,
                         mean=mean, std=std, **opts.extra)
    load_converted(model, converted)
    record = {"format_version": FORMAT_VERSION, "model": model.spec,
              "source": {**described, "layout": layout, "options": opts.given()}}
    return LoadedModel(model.eval(), record)


def _weights(source: ModelSource) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(source.target).expanduser()
    tensors = read_state_file(path, source.options.key, source.text)
    return tensors, {"kind": "torch", "path": str(path), "sha256": file_digest(path)}


def _open(source: ModelSource) -> LoadedModel:
    tensors, described = _weights(source)
    return build(source, tensors, described)


def _check(source: ModelSource) -> None:
    path = Path(source.target).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{source.text}: no file at {path}")
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{source.text}: expected a {', '.join(SUFFIXES)} file")
    if source.options.arch is not None:
        MODELS.get(source.options.arch)
    if source.options.layout is not None:
        LAYOUTS.get(source.options.layout)


register_source(SourceKind(
    name="torch",
    describe="a PyTorch state dict (.pt/.pth/.safetensors) in one of our architectures",
    open=_open, weights=_weights, check=_check,
))

__all__ = ["Converted", "build", "file_digest", "read_state_file"]
