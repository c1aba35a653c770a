"""The training attack every method builds from ``RunConfig.attack``, and the evaluation PGD
of its per-epoch validation."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mutualat.attacks import PGD
from mutualat.config import AttackConfig

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def training_attack(cfg: AttackConfig, loss: str | Callable) -> AttackFn:
    """PGD in ``cfg.norm`` maximizing ``loss``; ``steps == 0`` means natural training (x itself)."""
    if cfg.steps == 0:
        return lambda model, x, y: x
    return PGD(
        norm=cfg.norm,
        eps=cfg.eps,
        steps=cfg.steps,
        step_size=cfg.step_size,  # None: PGD's per-norm default (2.5 eps / steps of travel)
        random_start=cfg.random_start,
        loss=loss,
        bn_mode=cfg.bn_mode,
    )


def eval_pgd(attack: AttackConfig, steps: int, step_size: float | None):
    """The evaluation PGD: cross-entropy, no random start, in the training threat model.

    ``early_stop``: an example stops once misclassified (a valid adversarial point inside the
    ball was found, so it counts as broken); this is as strong as final-iterate PGD and much
    cheaper on models that break most examples early.
    """
    return PGD(norm=attack.norm, eps=attack.eps, steps=steps, step_size=step_size,
               random_start=False, loss="ce", early_stop=True)
