"""``py:package.module:function``: any model, built by a Python factory.

``py:mymodels:build?width=2`` imports ``mymodels`` and calls ``build(width=2)``;
``py:path/to/file.py:build`` loads the file first (no need to put it on ``sys.path``). The
factory returns an ``nn.Module`` mapping [0,1] images ``(B, C, H, W)`` to logits ``(B, K)``,
with its weights loaded. A model that expects normalized input gets ``mean=...&std=...``
and is wrapped in :class:`~mutualat.models.layers.Preprocessed`. ``classes``, ``channels``
and ``size`` only describe the model for reports and the data-fit check.

This runs the user's code, as ``python -c`` would: only name factories you trust.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mutualat.errors import ConfigError
from mutualat.models.layers import Preprocessed
from mutualat.models.sources import (
    FORMAT_VERSION,
    LoadedModel,
    ModelSource,
    SourceKind,
    channel_values,
    register_source,
)

_NOT_FOR_PY = ("arch", "layout", "key", "dataset", "threat", "model_dir")


def resolve_factory(source: ModelSource) -> Callable[..., Any]:
    """The function ``source`` names, its module imported (or its file loaded)."""
    module_part, sep, name = source.target.rpartition(":")
    if not sep or not module_part or not name:
        raise ConfigError(f"{source.text}: expected py:package.module:function or py:FILE.py:function")
    if module_part.endswith(".py"):
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"{source.text}: no file at {path}")
        # One module per file, under a name that cannot clash with an installed package.
        unique = "mutualat_py_source_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(unique)
        if module is None:
            spec = importlib.util.spec_from_file_location(unique, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[unique]
                raise
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"{source.text}: cannot import {module_part!r} ({exc}); install it, run from the "
                "folder that holds it, or name the file: py:path/to/file.py:function"
            ) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"{source.text}: {module_part} has no function {name!r}")
    return factory


def _build(source: ModelSource) -> nn.Module:
    _refuse_other_options(source)
    model = resolve_factory(source)(**source.options.extra)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{source.text}: the factory returned a {type(model).__name__}, not an nn.Module")
    return model


def _open(source: ModelSource) -> LoadedModel:
    opts = source.options
    model = _build(source)
    spec = getattr(model, "spec", None)  # one of ours, built by create_model
    if isinstance(spec, dict) and opts.mean is None:
        spec = dict(spec)
    else:
        channels = opts.channels or 3
        mean = channel_values(opts.mean, channels, "mean", source.text)
        std = channel_values(opts.std, channels, "std", source.text)
        if (mean is None) != (std is None):
            raise ConfigError(f"{source.text}: give both mean and std, or neither")
        if mean is not None:
            model = Preprocessed(model, mean, std)
        spec = {"name": f"py:{source.target}", "num_classes": opts.classes,
                "in_channels": opts.channels, "input_size": opts.size, "mean": mean, "std": std}
    record = {"format_version": FORMAT_VERSION, "model": spec,
              "source": {"kind": "py", "factory": source.target, "options": opts.given()}}
    return LoadedModel(model.eval(), record)


def _weights(source: ModelSource) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    model = _build(source)
    return dict(model.state_dict()), {"kind": "py", "factory": source.target,
                                      "options": source.options.given()}


def _refuse_other_options(source: ModelSource) -> None:
    given = [k for k in _NOT_FOR_PY if getattr(source.options, k) is not None]
    if given:
        raise ConfigError(
            f"{source.text}: py: sources take the factory's keywords and mean, std, classes, "
            f"channels, size; not {', '.join(given)}"
        )


def _check(source: ModelSource) -> None:
    _refuse_other_options(source)
    module_part = source.target.rpartition(":")[0]
    # Only what needs no code to run: importing the module is left to the load itself.
    if module_part.endswith(".py") and not Path(module_part).expanduser().is_file():
        raise ConfigError(f"{source.text}: no file at {module_part}")


register_source(SourceKind(
    name="py",
    describe="a Python factory returning an nn.Module ([0,1] images -> logits)",
    open=_open, weights=_weights, check=_check,
))
