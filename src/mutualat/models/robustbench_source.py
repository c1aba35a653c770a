"""``robustbench:NAME``: a model of the RobustBench model zoo (Croce et al., "RobustBench: a
standardized adversarial robustness benchmark", NeurIPS 2021 Datasets and Benchmarks).

``robustbench:Carmon2019Unlabeled?dataset=cifar10&threat=Linf&model_dir=models``

RobustBench keeps each model's weights at ``<model_dir>/<dataset>/<threat>/<NAME>.pt``
(``model_dir`` defaults to ``models`` in the working directory, as ``robustbench.load_model``
does): a ``torch.save`` of the state dict, or of ``{"state_dict": ...}``, keys often prefixed
``module.``.

- With the ``robustbench`` package installed (``pip install "mutualat[robustbench]"``),
  ``robustbench.utils.load_model`` builds the model (any architecture of the zoo) and
  downloads missing weights to that path when online.
- Without it (or when it cannot be imported, e.g. for lack of torchvision), mutualat reads
  the file at that path itself and builds one of our architectures around it: the zoo entries
  listed in :data:`ARCHITECTURES` (RobustBench's plain WideResNets, which are TRADES') need
  nothing more; any other entry needs ``arch=`` (and ``mean``/``std`` unless the file
  records them). Nothing is ever downloaded this way.

Offline and without the file, the error says where the weights would be read from and how
to place them.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import torch

from mutualat.errors import CheckpointError, ConfigError
from mutualat.models import torch_source
from mutualat.models.sources import (
    FORMAT_VERSION,
    LoadedModel,
    ModelSource,
    SourceKind,
    register_source,
)

DEFAULT_MODEL_DIR = "models"  # robustbench.utils.load_model's default
DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}  # RobustBench's datasets, classes
THREATS = ("Linf", "L2", "corruptions")

# Zoo entries that are RobustBench's (TRADES') WideResNet on raw [0,1] pixels, by
# (dataset, threat): our architecture and its options. From robustbench/model_zoo/cifar10.py;
# an entry missing here only needs arch= (the weights are checked key by key either way).
_WRN28 = ("wrn28_10", {})
_WRN34 = ("wrn34_10", {})
ARCHITECTURES: dict[tuple[str, str], dict[str, tuple[str, dict[str, Any]]]] = {
    ("cifar10", "Linf"): {
        "Standard": _WRN28,
        "Carmon2019Unlabeled": _WRN28,
        "Sehwag2020Hydra": _WRN28,
        "Wang2020Improving": _WRN28,
        "Wu2020Adversarial_extra": _WRN28,
        "Zhang2019Theoretically": _WRN34,
        "Zhang2019You": _WRN34,
        "Zhang2020Attacks": _WRN34,
        "Huang2020Self": _WRN34,
        "Wu2020Adversarial": _WRN34,
    },
    ("cifar10", "L2"): {
        "Standard": _WRN28,
        "Wu2020Adversarial": _WRN34,
    },
}


def _where(source: ModelSource) -> tuple[str, str, Path]:
    """(dataset, threat, weights file) of a source, with RobustBench's spellings."""
    opts = source.options
    dataset = (opts.dataset or "cifar10").lower()
    if dataset not in DATASETS:
        raise ConfigError(f"{source.text}: dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    threat = {t.lower(): t for t in THREATS}.get((opts.threat or "Linf").lower())
    if threat is None:
        raise ConfigError(f"{source.text}: threat must be one of {', '.join(THREATS)}, got {opts.threat!r}")
    folder = Path(opts.model_dir or DEFAULT_MODEL_DIR).expanduser()
    return dataset, threat, folder / dataset / threat / f"{source.target}.pt"


def _placement(source: ModelSource, path: Path) -> str:
    return (
        f"{source.text}: its weights are read from {path} (RobustBench's layout "
        "<model_dir>/<dataset>/<threat>/<name>.pt; model_dir=DIR chooses the folder). Offline, "
        "download the file on a machine with a network (robustbench.utils.load_model with "
        "the same name, dataset and threat model puts it there) and copy it to that path"
    )


def _package() -> Any | None:
    """``robustbench.utils`` if the package imports here, else None (it is optional, and
    its own imports, torchvision among them, may be missing)."""
    try:
        return importlib.import_module("robustbench.utils")
    except Exception:  # an optional package that fails to import is simply not there
        return None


def _record(source: ModelSource, spec: dict[str, Any], path: Path, loader: str,
            layout: str | None = None) -> dict[str, Any]:
    dataset, threat, _ = _where(source)
    described = {"kind": "robustbench", "name": source.target, "dataset": dataset,
                 "threat": threat, "path": str(path), "loader": loader}
    if layout is not None:
        described["layout"] = layout
    if path.is_file():
        described["sha256"] = torch_source.file_digest(path)
    return {"format_version": FORMAT_VERSION, "model": spec, "source": described,
            "dataset": dataset}


def _load_with_package(package: Any, source: ModelSource) -> torch.nn.Module:
    dataset, threat, path = _where(source)
    try:
        return package.load_model(model_name=source.target, model_dir=str(path.parents[2]),
                                  dataset=dataset, threat_model=threat)
    except Exception as exc:  # the package's own errors: unknown name, no network...
        if not path.is_file():
            raise CheckpointError(f"{_placement(source, path)} ({type(exc).__name__}: {exc})") from None
        raise CheckpointError(f"{source.text}: robustbench could not load it: {exc}") from None


def _open(source: ModelSource) -> LoadedModel:
    dataset, threat, path = _where(source)
    package = _package()
    if package is not None and source.options.arch is None:
        model = _load_with_package(package, source)
        spec = {"name": f"robustbench:{source.target}", "num_classes": DATASETS[dataset],
                "in_channels": 3, "input_size": None if dataset == "imagenet" else 32,
                "mean": None, "std": None}  # the zoo's models normalize inside, if at all
        version = getattr(importlib.import_module("robustbench"), "__version__", "")
        return LoadedModel(model.eval(), _record(source, spec, path, f"robustbench {version}".strip()))
    loaded = torch_source.build(_fallback(source), *_weights(source))
    record = _record(source, loaded.record["model"], path, "mutualat (RobustBench's file layout)",
                     loaded.record["source"]["layout"])
    return LoadedModel(loaded.model, record)


def _fallback(source: ModelSource) -> ModelSource:
    """The source with the architecture (and raw-pixel normalization) of a known zoo entry
    filled in, for building one of ours around the file."""
    dataset, threat, _ = _where(source)
    if source.options.arch is not None:
        return source
    known = ARCHITECTURES.get((dataset, threat), {})
    if source.target not in known:
        raise ConfigError(
            f"{source.text}: the robustbench package is not importable here, and mutualat does "
            f"not know the architecture of {source.target!r}; install it (pip install "
            "\"mutualat[robustbench]\") or say arch=NAME (and mean/std) for one of ours"
        )
    arch, options = known[source.target]
    filled = source.with_defaults(arch=arch, mean=[0.0], std=[1.0])
    extra = {**options, **source.options.extra}
    return dataclasses.replace(filled, options=dataclasses.replace(filled.options, extra=extra))


def _weights(source: ModelSource) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    dataset, threat, path = _where(source)
    package = _package()
    if not path.is_file() and package is not None:
        # The package downloads the file when online; its module then holds the weights.
        tensors = dict(_load_with_package(package, source).state_dict())
    elif not path.is_file():
        raise CheckpointError(_placement(source, path))
    else:
        tensors = torch_source.read_state_file(path, source.options.key, source.text)
    return tensors, {"kind": "robustbench", "name": source.target, "dataset": dataset,
                     "threat": threat, "path": str(path)}


def _check(source: ModelSource) -> None:
    _, _, path = _where(source)
    if _package() is None:
        _fallback(source)
        if not path.is_file():
            raise CheckpointError(_placement(source, path))


register_source(SourceKind(
    name="robustbench",
    describe="a RobustBench model by name (robustbench package, else its file layout)",
    open=_open, weights=_weights, check=_check,
))
