"""Model sources: one string names a model wherever a model file is accepted.

``eval --model``, ``transfer --source/--target``, ``models.N.init`` (ARD's teacher) and
:func:`load_model` take any of::

    runs/at/models/model.safetensors                 a mutualat model file (self-describing)
    torch:teacher.pt?arch=wrn34_10&mean=0&std=1      a plain PyTorch state dict (.pt, .pth,
                                                     .safetensors) in one of our architectures
    robustbench:Carmon2019Unlabeled?dataset=cifar10&threat=Linf
                                                     a RobustBench model by name
    py:mypackage.models:build?width=2                a Python factory returning an nn.Module
    py:path/to/file.py:build                         (the same, from a file)

The part after ``?`` holds options, ``key=value`` joined by ``&`` (values are YAML scalars;
``mean``/``std`` take comma-separated numbers, one number meaning every channel):

- ``arch``: a registered architecture (``mutualat list models``), with its options as further
  keys (``arch=wrn&depth=28&widen_factor=10``);
- ``mean``, ``std``: the input normalization the weights were trained with, in [0,1] units
  (``mean=0&std=1`` for models trained on raw [0,1] pixels, as TRADES' and RobustBench's);
  a file that records it (``normalize.mean``, RobustBench's ``mu``/``sigma``, robustness'
  ``normalizer``) needs neither;
- ``classes``, ``channels``, ``size``: number of classes, input channels and image side
  (classes and channels default to what the weights hold; size to 32);
- ``layout``: force one of :data:`mutualat.models.layouts.LAYOUTS` instead of detecting it;
  ``key``: the entry of a checkpoint dict that holds the state dict (``state_dict``,
  ``model``, ``net``... are found without it);
- ``robustbench:`` also takes ``dataset`` (cifar10), ``threat`` (Linf) and ``model_dir``
  (``models``, RobustBench's default); ``py:`` passes any other key to the factory.

A loaded model carries the same metadata record as a mutualat file (``{"format_version",
"model": spec, "source": {...}}``), so reports name where it came from. The kinds are
registered in :data:`SOURCES`: a new kind is one module and one registration.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

import torch
import yaml
from torch import nn

from mutualat.errors import CheckpointError, ConfigError
from mutualat.models import io
from mutualat.models.layouts import load_converted, to_our_layout
from mutualat.registry import Registry

FORMAT_VERSION = io.FORMAT_VERSION
_NAMED = ("arch", "mean", "std", "classes", "channels", "size", "layout", "key", "dataset",
          "threat", "model_dir")
_NUMBER_LIST = ("mean", "std")
_INTEGER = ("classes", "channels", "size")


@dataclass
class SourceOptions:
    """What follows ``?`` in a source string, typed. ``extra`` holds every other key: the
    architecture's options (``torch:``, ``robustbench:``) or the factory's keywords (``py:``)."""

    arch: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: int | None = None
    channels: int | None = None
    size: int | None = None
    layout: str | None = None
    key: str | None = None
    dataset: str | None = None
    threat: str | None = None
    model_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def given(self) -> dict[str, Any]:
        """The options that were set, as written in a record."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "extra"}
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class ModelSource:
    """A parsed source string: ``kind`` (``file``, ``torch``, ``robustbench``, ``py``),
    ``target`` (a path, a model name, ``module:function``) and its options."""

    kind: str
    target: str
    options: SourceOptions
    text: str

    def default_name(self) -> str:
        """The name reports give the model when the user gives none."""
        if self.kind == "file":
            return io_model_name(Path(self.target))
        if self.kind == "py":
            stem = self.target.rsplit(":", 1)[-1]
        elif self.kind == "torch":
            stem = Path(self.target).stem
        else:
            stem = self.target
        return re.sub(r"[^A-Za-z0-9._+-]", "_", stem).lstrip("._+-") or "model"

    def with_defaults(self, **defaults: Any) -> "ModelSource":
        """A copy where every option left unset takes its value from ``defaults`` (the CLI's
        ``--arch``, ``--mean``, ``--std``); a None default changes nothing."""
        changes = {k: v for k, v in defaults.items()
                   if v is not None and getattr(self.options, k) is None}
        if not changes:
            return self
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **changes))


@dataclass
class LoadedModel:
    model: nn.Module  # eval mode, [0,1] images (B, C, H, W) -> logits (B, K)
    record: dict[str, Any]  # {"format_version", "model": spec, "source": {...}, ...}


@dataclass(frozen=True)
class SourceKind:
    """How one kind of source is opened.

    ``open``: the model and its record. ``weights``: the state dict (in the file's own
    layout) and what the source says about normalization, for :func:`load_weights_into`.
    ``check``: cheap checks run before any data is read (a file exists, a name is known).
    """

    name: str
    describe: str
    open: Callable[[ModelSource], LoadedModel]
    weights: Callable[[ModelSource], tuple[dict[str, torch.Tensor], dict[str, Any]]]
    check: Callable[[ModelSource], None]


SOURCES: Registry[SourceKind] = Registry("model source")


def register_source(kind: SourceKind) -> SourceKind:
    return SOURCES.register(kind.name)(kind)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def io_model_name(path: Path) -> str:
    """The default name of a mutualat model file: its run and role
    (``runs/mat/models/h1.safetensors`` -> ``mat-h1``, ``.../models/model.safetensors`` -> the run)."""
    stem = path.name.removesuffix(".safetensors")
    if path.parent.name == "models" and path.parent.parent.name:
        run = path.parent.parent.name
        name = run if stem == "model" else f"{run}-{stem}"
    else:
        name = stem
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip("._+-") or "model"


def source_kind(text: str | os.PathLike) -> str:
    """``torch``, ``robustbench``, ``py`` when ``text`` starts with that prefix and a colon,
    else ``file`` (a path; ``C:\\...`` stays a path since ``c`` is no kind)."""
    if isinstance(text, str):
        prefix, sep, _ = text.partition(":")
        if sep and prefix in SOURCES:
            return prefix
    return "file"


def is_foreign(text: str | os.PathLike) -> bool:
    return source_kind(text) != "file"


def parse_source(text: str | os.PathLike | ModelSource) -> ModelSource:
    """Parse a source string (see the module docstring). Raises :class:`ConfigError` for an
    option of the wrong type; nothing is read from disk."""
    if isinstance(text, ModelSource):
        return text
    kind = source_kind(text)
    if kind == "file":
        return ModelSource("file", str(text), SourceOptions(), str(text))
    body = str(text)[len(kind) + 1:]
    target, _, query = body.partition("?")
    if not target:
        raise ConfigError(f"model source {text!r}: nothing after {kind}:")
    return ModelSource(kind, target, _parse_options(str(text), query), str(text))


def _parse_options(text: str, query: str) -> SourceOptions:
    options = SourceOptions()
    for item in filter(None, query.split("&")):
        key, sep, raw = item.partition("=")
        key, raw = unquote(key.strip()), unquote(raw.strip())
        if not sep or not key:
            raise ConfigError(f"model source {text!r}: options are key=value joined by &, got {item!r}")
        if key in _NUMBER_LIST:
            setattr(options, key, _numbers(text, key, raw))
        elif key in _INTEGER:
            value = _scalar(raw)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model source {text!r}: {key} must be a positive integer, got {raw!r}")
            setattr(options, key, value)
        elif key in _NAMED:
            setattr(options, key, raw)
        else:
            options.extra[key] = _scalar(raw)
    return options


def _scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        return raw


def _numbers(text: str, key: str, raw: str) -> list[float]:
    try:
        values = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"model source {text!r}: {key} must be numbers separated by commas, got {raw!r}")
    return values


def channel_values(values: list[float] | None, channels: int, what: str, where: str) -> list[float] | None:
    """One value per channel: a single number stands for every channel."""
    if values is None:
        return None
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ConfigError(f"{where}: {what} has {len(values)} values for {channels} input channels")
    return list(values)


# --------------------------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------------------------


def open_model(source: str | os.PathLike | ModelSource, device: str | torch.device = "cpu",
               **defaults: Any) -> LoadedModel:
    """The model a source names, in eval mode on ``device``, with its metadata record.

    ``defaults`` fill options the source leaves unset (``arch``, ``mean``, ``std``,
    ``dataset``...). Raises :class:`CheckpointError` or :class:`ConfigError` with a message
    naming the source.
    """
    parsed = parse_source(source).with_defaults(**defaults)
    if parsed.kind == "file":
        record = io.read_model_meta(parsed.target)
        model = io.load_model(parsed.target, device="cpu")
        record = {**record, "source": {"kind": "file", "path": parsed.target}}
    else:
        loaded = SOURCES.get(parsed.kind).open(parsed)
        model, record = loaded.model, loaded.record
    return LoadedModel(model.eval().to(device), record)


def check_source(source: str | os.PathLike | ModelSource) -> ModelSource:
    """Parse ``source`` and run its kind's cheap checks (the file exists, the architecture
    and names are known); nothing is loaded. Returns the parsed source."""
    parsed = parse_source(source)
    if parsed.kind == "file":
        if not Path(parsed.target).is_file():
            hint = ""
            if Path(parsed.target).suffix in (".pt", ".pth", ".bin", ".ckpt"):
                hint = " (a plain PyTorch file is read as torch:FILE?arch=NAME&mean=...&std=...)"
            raise CheckpointError(f"no model file at {parsed.target}{hint}")
    else:
        SOURCES.get(parsed.kind).check(parsed)
    return parsed


def load_model(source: str | os.PathLike | ModelSource, device: str | torch.device = "cpu",
               **defaults: Any) -> nn.Module:
    """Any model source (see the module docstring) as an ``nn.Module`` in eval mode on
    ``device``, mapping [0,1] images ``(B, C, H, W)`` to logits ``(B, K)``; a plain path is a
    mutualat model file, as :func:`mutualat.models.io.load_model` reads it."""
    return open_model(source, device, **defaults).model


def read_model_meta(source: str | os.PathLike | ModelSource) -> dict:
    """The metadata record of any source; a mutualat file's header only, while a foreign
    source is opened (its record describes the loaded model)."""
    parsed = parse_source(source)
    if parsed.kind == "file":
        return io.read_model_meta(parsed.target)
    return open_model(parsed).record


def load_weights_into(model: nn.Module, source: str | os.PathLike | ModelSource) -> dict:
    """Load a source's weights into ``model`` (one of ours, built by ``create_model``); returns
    the source's record. A mutualat file must have the model's exact spec
    (:func:`mutualat.models.io.load_weights_into`).

    A foreign source (``models.N.init: torch:teacher.pt?mean=0&std=1``) is mapped onto the
    model's architecture (the model's own name and options unless it says ``arch``, which must
    then agree) through the checkpoint layouts, and its input normalization replaces the
    model's: the weights were trained with it, so the model must normalize as they expect
    (``model.spec`` is updated to match). Mode and device of ``model`` are kept.
    """
    parsed = parse_source(source)
    if parsed.kind == "file":
        return io.load_weights_into(model, parsed.target)
    model = getattr(model, "_orig_mod", model)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        raise TypeError("load_weights_into needs a model built by create_model (it has no .spec)")
    where = parsed.text
    arch = parsed.options.arch
    if arch is not None and arch != spec["name"]:
        raise CheckpointError(
            f"{where}: its arch={arch} differs from the model it initializes ({spec['name']}); "
            "drop arch= or change the model's name"
        )
    tensors, described = SOURCES.get(parsed.kind).weights(parsed)
    layout, converted = to_our_layout(tensors, model.state_dict(), parsed.options.layout, where)
    channels = spec["in_channels"]
    mean, std = resolve_normalization(parsed, converted.mean, converted.std, channels)
    load_converted(model, converted)
    normalize = getattr(model, "normalize", None)
    if normalize is not None:
        with torch.no_grad():
            normalize.mean.copy_(torch.tensor(mean).view_as(normalize.mean))
            normalize.std.copy_(torch.tensor(std).view_as(normalize.std))
    model.spec = {**spec, "mean": mean, "std": std}
    return {"format_version": FORMAT_VERSION, "model": model.spec,
            "source": {**described, "layout": layout}}


def resolve_normalization(source: ModelSource, file_mean: list[float] | None,
                          file_std: list[float] | None, channels: int) -> tuple[list[float], list[float]]:
    """The input normalization of a foreign model: what the source string gives, else what
    the file records; both given must agree; neither is an error (guessing would silently
    shift every input)."""
    where = source.text
    given_mean = channel_values(source.options.mean, channels, "mean", where)
    given_std = channel_values(source.options.std, channels, "std", where)
    if (given_mean is None) != (given_std is None):
        raise ConfigError(f"{where}: give both mean and std, or neither")
    if given_mean is not None and file_mean is not None:
        if not (_close(given_mean, file_mean) and _close(given_std, file_std)):
            raise CheckpointError(
                f"{where}: mean={given_mean}, std={given_std} differ from the normalization the "
                f"file records (mean={file_mean}, std={file_std}); drop mean= and std="
            )
    if given_mean is not None:
        return given_mean, given_std
    if file_mean is not None:
        return (channel_values(file_mean, channels, "the file's mean", where),
                channel_values(file_std, channels, "the file's std", where))
    raise ConfigError(
        f"{where}: say the input normalization the weights were trained with, e.g. "
        "mean=0.4914,0.4822,0.4465&std=0.2471,0.2435,0.2616 (or --mean/--std), or mean=0&std=1 "
        "for a model trained on raw [0,1] pixels (TRADES, RobustBench's WideResNets)"
    )


def _close(a: list[float] | None, b: list[float] | None) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(
        abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x, y in zip(a, b))
