"""The single training loop shared by every method."""

from mutualat.train.trainer import Trainer

__all__ = ["Trainer"]
