"""Exceptions that carry a message meant for the user.

The CLI prints any :class:`MutualatError` as ``error: <message>`` and exits non-zero; every
other exception is a bug and keeps its traceback.
"""


class MutualatError(Exception):
    """Base class of every error whose message is meant for a user."""


class ConfigError(MutualatError, ValueError):
    """An unknown key, a value of the wrong type or out of range, an unknown name."""


class FieldError(ConfigError):
    """One field of a config object has a bad value. The object does not know where it sits
    in a config; the reader that built it (``mutualat.config.from_dict``) puts the key's
    path in front, so the message names ``method.params.threats.1.eps``, not ``eps``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field} {reason}")
        self.field, self.reason = field, reason


class DataError(MutualatError):
    """A missing, truncated, corrupt or mis-shaped data file."""


class CheckpointError(MutualatError):
    """A checkpoint or model file that is missing, corrupt or of another architecture."""


class TrainingError(MutualatError):
    """Training cannot go on (for example a NaN loss)."""
