"""Layers shared by the model families."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from mutualat.errors import ConfigError


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``: the first layer of every model.

    Keeping normalization inside the model lets every other part of the library (data,
    attacks, threat models, evaluation) speak [0,1] pixels, as MadryLab/robustness does.
    ``mean`` and ``std`` are buffers, so they follow ``.to(device)`` and are saved in the
    state dict. Input ``(B, C, H, W)``, output the same shape.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean, std = list(mean), list(std)
        if len(mean) != len(std) or not mean:
            raise ConfigError(
                f"normalization mean and std need one value per channel; got {len(mean)} "
                f"mean and {len(std)} std values"
            )
        if not all(math.isfinite(m) for m in mean):
            raise ConfigError(f"normalization mean must be finite; got {mean}")
        if not all(math.isfinite(s) and s > 0 for s in std):
            raise ConfigError(f"normalization std must be finite and > 0; got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @classmethod
    def identity(cls, channels: int) -> Normalize:
        return cls([0.0] * channels, [1.0] * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        std = [round(v, 4) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}"


class Preprocessed(nn.Module):
    """``model((x - mean) / std)``: a model that expects normalized input, taking [0,1] pixels.

    For models from elsewhere whose normalization lives in the data pipeline (torchvision's
    ``transforms.Normalize``): wrapped, they speak [0,1] pixels like ours, so attack radii
    and the [0,1] box mean what they say. ``(B, C, H, W)`` -> whatever ``model`` returns.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))
