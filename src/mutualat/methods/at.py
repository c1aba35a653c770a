"""Adversarial training (Madry et al., ICLR 2018), one or several independent models.

Each member minimizes its loss on its own PGD examples. ``loss="ce"`` is Madry's
cross-entropy; ``loss="lc"`` is MART's boosted cross-entropy L_C, the "AT" of the MAT paper
(Eq. 1), whose training attack maximizes L_C as well (docs/METHOD.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mutualat import losses
from mutualat.methods.attacks import training_attack
from mutualat.methods.base import Method, StepResult, accuracy, register_method
from mutualat.methods.checks import check_loss

if TYPE_CHECKING:
    from mutualat.train.cohort import Cohort


@dataclass
class ATParams:
    loss: str = "ce"  # "ce" (Madry) or "lc" (boosted cross-entropy, the MAT paper's AT)

    def validate(self) -> None:
        check_loss(self.loss)


@register_method("at")
class AT(Method):
    Params = ATParams

    def __init__(self, params: ATParams, attack, frozen) -> None:
        super().__init__(params, attack, frozen)
        self.criterion = losses.CLASSIFICATION_LOSSES[params.loss]
        self.attack = training_attack(attack, loss=params.loss)

    def loss(self, cohort: Cohort, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        total = x.new_zeros(())
        metrics = {}
        for member in cohort.trained():
            model, role = member.module, member.role
            logits = model(self.attack(model, x, y))
            loss = self.criterion(logits, y)
            total = total + loss
            metrics[f"loss/{role}"] = loss.detach()
            metrics[f"adv_acc/{role}"] = accuracy(logits, y)
        return StepResult(total, metrics)
