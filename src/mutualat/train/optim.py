"""SGD per cohort member and the paper's step schedule, scaled to any run length."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from mutualat.config import ModelConfig, OptimConfig
from mutualat.errors import ConfigError
from mutualat.models import MODELS


def lr_and_weight_decay(model_cfg: ModelConfig) -> tuple[float, float]:
    """The member's learning rate and weight decay: ``models.N.lr`` / ``weight_decay`` where
    the run sets them, else what the architecture declared at its registration
    (``@MODELS.register(name, lr=..., weight_decay=...)``; the paper's values for ResNet-18
    and WRN-34-10, the CPU-scale ones for the small CNNs: docs/METHOD.md §4).

    :class:`ConfigError` if neither gives one: an architecture registered without defaults
    must have them set by the run, never a rate meant for another architecture.
    """
    declared = MODELS.declared(model_cfg.name)
    given = {"lr": model_cfg.lr, "weight_decay": model_cfg.weight_decay}
    chosen = {key: declared.get(key) if value is None else value for key, value in given.items()}
    missing = [key for key, value in chosen.items() if value is None]
    if missing:
        raise ConfigError(
            f"model {model_cfg.name!r} declares no default {' or '.join(missing)} at its "
            f"registration; set {' and '.join(f'models.N.{k}' for k in missing)} for it"
        )
    return chosen["lr"], chosen["weight_decay"]


def member_learning_rates(models: Sequence[ModelConfig], roles: Sequence[str],
                          current: Mapping[int, float]) -> dict[str, float]:
    """``{"lr/<role>": rate}`` of every trained member, for the step records.

    ``current``: ``{member index: its optimizer's rate}`` of the members this process holds.
    Every member follows the same schedule from its own base rate, so a member held by
    another process (cohort-parallel training) has ``base * (rate / base)`` of a held one:
    the records name every member whatever the placement.
    """
    if not current:
        return {}
    index, rate = next(iter(current.items()))
    factor = rate / lr_and_weight_decay(models[index])[0]
    return {f"lr/{roles[i]}": current.get(i, lr_and_weight_decay(m)[0] * factor)
            for i, m in enumerate(models) if not m.frozen}


def build_optimizer(model: nn.Module, model_cfg: ModelConfig, cfg: OptimConfig) -> torch.optim.SGD:
    lr, wd = lr_and_weight_decay(model_cfg)
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=wd, nesterov=cfg.nesterov
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.MultiStepLR:
    """Divide the rate by ``1/gamma`` at the milestone fractions of the run, stepped per batch.

    Per-batch milestones keep the paper's schedule exact at 120 epochs (75/90/100) and keep
    the decays distinct in short runs, where per-epoch rounding would merge them.
    """
    total = cfg.epochs * steps_per_epoch
    milestones = sorted({max(1, round(f * total)) for f in cfg.milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
