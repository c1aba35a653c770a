"""The training attack every method builds from ``RunConfig.attack``."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mutualat.config import AttackConfig

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def training_attack(cfg: AttackConfig, loss: str | Callable) -> AttackFn:
    """PGD in ``cfg.norm`` maximizing ``loss``; ``steps == 0`` means natural training (x itself)."""
    if cfg.steps == 0:
        return lambda model, x, y: x
    from mutualat.attacks import PGD

    return PGD(
        norm=cfg.norm,
        eps=cfg.eps,
        steps=cfg.steps,
        step_size=cfg.step_size,  # None: PGD's per-norm default (2.5 eps / steps of travel)
        random_start=cfg.random_start,
        loss=loss,
        bn_mode=cfg.bn_mode,
    )
