"""Checks of method parameters that several methods share (one message for one mistake)."""

from __future__ import annotations

from typing import Sequence

from mutualat.errors import ConfigError
from mutualat.losses import CLASSIFICATION_LOSSES


def check_weight(name: str, value: float) -> None:
    """A mixing weight such as alpha must lie in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")


def check_temperature(value: float, name: str = "method.params.temperature") -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def check_loss(value: str, name: str = "method.params.loss") -> None:
    """A label loss by name: "ce" or "lc" (:data:`mutualat.losses.CLASSIFICATION_LOSSES`)."""
    if value not in CLASSIFICATION_LOSSES:
        raise ConfigError(f"{name} must be 'ce' or 'lc', got {value!r}")


def check_trainable(method: str, frozen: Sequence[bool]) -> None:
    if all(frozen):
        raise ConfigError(f"method {method!r} needs at least one model that is not frozen")
