"""SGD per cohort member and the paper's step schedule, scaled to any run length."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from mutualat.config import ModelConfig, OptimConfig

# (learning rate, weight decay) per architecture. ResNet-18 and WRN follow the MAT paper
# (SPEC.md section 4); the small CNNs use a larger rate because CPU-scale runs are short.
ARCH_DEFAULTS: dict[str, tuple[float, float]] = {
    "resnet18": (0.01, 3.5e-3),
    "preact_resnet18": (0.01, 3.5e-3),
    "wrn": (0.1, 7e-4),
    "wrn34_10": (0.1, 7e-4),
    "wrn28_10": (0.1, 7e-4),
    "wrn16_4": (0.1, 7e-4),
}
SMALL_MODEL_DEFAULT = (0.05, 5e-4)


def lr_and_weight_decay(model_cfg: ModelConfig) -> tuple[float, float]:
    lr, wd = ARCH_DEFAULTS.get(model_cfg.name, SMALL_MODEL_DEFAULT)
    return (
        model_cfg.lr if model_cfg.lr is not None else lr,
        model_cfg.weight_decay if model_cfg.weight_decay is not None else wd,
    )


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
