"""Checks that run before any data is read or downloaded: every name a config uses exists.

A typo in ``models.1.name`` or ``method.name`` should cost a second, not a CIFAR download
and a decode; so every registry lookup the trainer will do later is done here first, and the
error names the config key.
"""

from __future__ import annotations

from mutualat.config import RunConfig
from mutualat.data import AUGMENTATIONS, DATASETS
from mutualat.errors import CheckpointError, ConfigError
from mutualat.methods import METHODS
from mutualat.models import MODELS, check_source, model_options

LP_NORMS = ("linf", "l2", "l1")


def check_names(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` (or :class:`CheckpointError` for a missing ``init`` file)
    naming the key, if the dataset, method, a model architecture or option, a model's
    ``init`` source, the attack norm or the augmentation is unknown. Reads no data."""
    _named("data.name", lambda: DATASETS.get(cfg.data.name))
    if cfg.data.augment is not None and cfg.data.augment not in AUGMENTATIONS:
        raise ConfigError(f"data.augment: unknown augmentation {cfg.data.augment!r}; "
                          f"known: {', '.join(sorted(AUGMENTATIONS))}")
    _named("method.name", lambda: METHODS.get(cfg.method.name))
    if cfg.attack.norm not in LP_NORMS:
        raise ConfigError(f"attack.norm must be one of {', '.join(LP_NORMS)}, got {cfg.attack.norm!r}")
    for i, model in enumerate(cfg.models):
        _named(f"models.{i}.name", lambda: MODELS.get(model.name))
        options = model_options(model.name)
        unknown = sorted(set(model.kwargs) - set(options))
        if unknown:
            takes = ", ".join(options) or "none"
            raise ConfigError(f"models.{i}.kwargs: model {model.name!r} has no option "
                              f"{', '.join(map(repr, unknown))}; its options: {takes}")
        if model.init:
            _named(f"models.{i}.init", lambda: check_source(model.init))


def _named(key: str, lookup) -> None:
    try:
        lookup()
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{key}: {exc}") from None
