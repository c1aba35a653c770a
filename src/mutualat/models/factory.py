"""Build a model by name (the registry and the factory, after timm's ``_registry``/``_factory``).

A family registers one builder per architecture name, with the architecture's default
learning rate and weight decay::

    @MODELS.register("resnet18", lr=0.01, weight_decay=3.5e-3)
    def resnet18(num_classes: int, in_channels: int, input_size: int,
                 normalize: Normalize) -> ResNet: ...

A run uses those unless it sets ``models.N.lr`` / ``models.N.weight_decay``; an architecture
that declares none has no default, and a run that names it must set both (a
:class:`ConfigError` otherwise, from :func:`mutualat.train.optim.lr_and_weight_decay`): no
architecture silently trains at another one's rate.

Every builder takes those four keyword arguments; any further keyword parameter it declares
(with a default) is an *option* of that architecture, such as ``depth`` of ``wrn``.
:func:`create_model` checks the options against the builder's signature, builds the model and
records in ``model.spec`` everything needed to rebuild it (``create_model(**model.spec)``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from torch import nn

from mutualat.errors import ConfigError
from mutualat.models.layers import Normalize
from mutualat.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", declares=("lr", "weight_decay"))

# The keyword arguments every builder takes; everything else a builder declares is an option.
_COMMON = ("num_classes", "in_channels", "input_size", "normalize")


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered architecture ``name``.

    The model maps ``[0,1]`` images ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``.
    Its first layer ``model.normalize`` computes ``(x - mean) / std`` per channel; ``mean`` and
    ``std`` default to 0 and 1 (identity) and need ``in_channels`` values each. ``input_size``
    is the side of the square images the model is built for (only architectures with a
    flattening classifier depend on it). ``kwargs`` are the architecture's options.

    Raises :class:`ConfigError` for an unknown name or option, or an invalid value.
    """
    builder = MODELS.get(name)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels),
                       ("input_size", input_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {key} must be a positive integer; got {value!r}")
    mean_list = _channel_stats("mean", mean, 0.0, in_channels)
    std_list = _channel_stats("std", std, 1.0, in_channels)
    options = _resolve_options(name, builder, kwargs)
    model = builder(
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        normalize=Normalize(mean_list, std_list),
        **options,
    )
    # A plain, JSON-friendly record of how the model was built; saved with its weights.
    # Options are stored with their defaults filled in, so a later change of a default
    # cannot silently change what an old file rebuilds.
    model.spec = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_size": input_size,
        "mean": mean_list,
        "std": std_list,
        **options,
    }
    return model


def model_options(name: str) -> dict[str, Any]:
    """The options of architecture ``name`` with their defaults, e.g. ``{"depth": 34, ...}``."""
    builder = MODELS.get(name)
    return {p.name: p.default for p in _option_params(builder)}


def _channel_stats(
    what: str, values: Sequence[float] | None, default: float, channels: int
) -> list[float]:
    if values is None:
        return [default] * channels
    try:  # any sequence of numbers: a list, a tuple, a numpy array, a 1-d tensor
        if isinstance(values, (str, bytes)):
            raise TypeError
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(
            f"normalization {what} must be a list of {channels} numbers; got {values!r}"
        ) from None
    if len(numbers) != channels:
        raise ConfigError(
            f"normalization {what} has {len(numbers)} values but the model has "
            f"{channels} input channels"
        )
    return numbers


def _option_params(builder: Callable[..., nn.Module]) -> list[inspect.Parameter]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(builder).parameters.values()
    return [p for p in params if p.kind in kinds and p.name not in _COMMON]


def _resolve_options(
    name: str, builder: Callable[..., nn.Module], kwargs: dict[str, Any]
) -> dict[str, Any]:
    params = _option_params(builder)
    known = [p.name for p in params]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        takes = f"its options are: {', '.join(known)}" if known else "it takes no options"
        raise ConfigError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; {takes}")
    options = {}
    for p in params:
        if p.name in kwargs:
            options[p.name] = kwargs[p.name]
        elif p.default is not p.empty:
            options[p.name] = p.default
        else:
            raise ConfigError(f"model {name!r} needs the option {p.name!r}")
    return options
