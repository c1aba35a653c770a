"""Training methods as losses over a cohort; importing this package registers them all."""

from mutualat.methods.base import (
    METHODS,
    Method,
    StepResult,
    build_method,
    register_method,
    resolve_method_params,
)
from mutualat.methods import at  # noqa: F401  (registration)
from mutualat.methods import act, ard, mart, mat, trades  # noqa: F401  (registration)
from mutualat.methods import at_multi, mat_mp  # noqa: F401  (registration)

__all__ = [
    "METHODS", "Method", "StepResult", "build_method", "register_method", "resolve_method_params",
]
