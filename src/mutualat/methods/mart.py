"""MART (Wang, Zou, Yi, Bailey, Ma, Gu, "Improving Adversarial Robustness Requires Revisiting
Misclassified Examples", ICLR 2020), one or several independent models.

Eq. 8 of the paper as the official code (YisenWang/MART ``mart.py``) computes it::

    L = BCE(p(x'), y) + beta * mean_i[ KL(p(x_i) || p(x'_i)) * (1 - p(x_i)_{y_i}) ]

``BCE`` is the boosted cross-entropy L_C (:func:`mutualat.losses.boosted_cross_entropy`), KL
sums over classes per example. Gradients flow through the clean prediction in both the KL and
the weight ``1 - p(x)_y``, as in the official code. ``x'`` is PGD maximizing cross-entropy
(``training_attack(cfg, "ce")``), as MART's code does; that code starts at
``x + 0.001 * N(0, 1)``, here the start is ``attack.random_start`` (uniform in the ball, the
project's PGD default for "ce").

``beta``: 5 by default (the MAT paper's ResNet-18 setting, docs/METHOD.md §6); use 6 for
WRN-34-10 (``method.params.beta: 6``), the value of MART's paper and code for WideResNets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mutualat import losses
from mutualat.errors import ConfigError
from mutualat.methods.attacks import training_attack
from mutualat.methods.base import Method, StepResult, accuracy, register_method
from mutualat.methods.checks import check_trainable

if TYPE_CHECKING:
    from mutualat.train.cohort import Cohort


@dataclass
class MARTParams:
    beta: float = 5.0  # 5 for ResNet-18, 6 for WRN-34-10 (docs/METHOD.md §6)

    def validate(self) -> None:
        if not self.beta >= 0:
            raise ConfigError(f"method.params.beta must be >= 0, got {self.beta}")


def mart_loss(
    logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MART's loss from clean and adversarial logits ``(B, K)``: (total, BCE, weighted KL)."""
    bce = losses.boosted_cross_entropy(logits_adv, y)
    kl = losses.kl_divergence(logits_nat, logits_adv, reduction="none")  # (B,)
    p_true = F.softmax(logits_nat.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    robust = (kl * (1.0 - p_true)).mean()
    return bce + beta * robust, bce, robust


@register_method("mart")
class MART(Method):
    Params = MARTParams

    def __init__(self, params: MARTParams, attack, frozen) -> None:
        super().__init__(params, attack, frozen)
        check_trainable("mart", self.frozen)
        self.attack = training_attack(attack, loss="ce")

    def loss(self, cohort: Cohort, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        total = x.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        for member in cohort.trained():
            model, role = member.module, member.role
            x_adv = self.attack(model, x, y)
            logits_nat = model(x)
            logits_adv = model(x_adv)
            loss, bce, robust = mart_loss(logits_nat, logits_adv, y, self.params.beta)
            total = total + loss
            metrics[f"loss/{role}"] = loss.detach()
            metrics[f"bce/{role}"] = bce.detach()
            metrics[f"kl/{role}"] = robust.detach()
            metrics[f"adv_acc/{role}"] = accuracy(logits_adv, y)
        return StepResult(total, metrics)
