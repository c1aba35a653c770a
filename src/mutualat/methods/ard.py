"""Adversarially Robust Distillation (ARD): Goldblum, Fowl, Feizi, Goldstein, AAAI 2020.

Members: ``[teacher, student]``. The teacher is a fixed, previously adversarially trained
model loaded from a saved model file (``ModelConfig.init`` plus ``frozen: true``); only the
student learns. Eq. 3 of the paper, as the official code (goldblum/AdversariallyRobustDistillation
``main.py``) computes it::

    L = alpha * T^2 * KL(softmax(teacher(x) / T) || softmax(student(x_adv) / T))
        + (1 - alpha) * CE(student(x), y)

with ``T = 30`` and ``alpha = 1`` (the code's defaults; with alpha = 1 the clean CE term
vanishes and the student's clean forward is skipped). The teacher's soft labels are computed
under ``no_grad`` in eval mode (the trainer keeps frozen members in eval mode).

The attack: the paper defines ``x_adv = x + argmax_delta CE(student(x + delta), y)``, and the
official code's ``AttackPGD`` maximizes exactly that (cross-entropy of the *student* against
the true labels, not the KL to the teacher), so here ``training_attack(cfg, "ce")`` on the
student. That code runs the attack with batch-norm in train mode; the project's default is
eval mode (docs/METHOD.md §6), ``attack.bn_mode: train`` reproduces theirs.

KL sums over classes and averages over the batch (``batchmean``, the paper's formula). The
official code's ``nn.KLDivLoss()`` averages over batch *and* classes, i.e. it is this loss
divided by K (10 on CIFAR-10): with alpha = 1 that only rescales the learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mutualat import losses
from mutualat.errors import ConfigError
from mutualat.methods.attacks import training_attack
from mutualat.methods.base import Method, StepResult, accuracy, register_method
from mutualat.methods.checks import check_temperature, check_weight

if TYPE_CHECKING:
    from mutualat.train.cohort import Cohort


@dataclass
class ARDParams:
    alpha: float = 1.0  # weight of the distillation term; 1 - alpha weighs the clean CE
    temperature: float = 30.0  # distillation temperature T (ARD's default)

    def validate(self) -> None:
        check_weight("method.params.alpha", self.alpha)
        check_temperature(self.temperature)


@register_method("ard")
class ARD(Method):
    Params = ARDParams

    def __init__(self, params: ARDParams, attack, frozen) -> None:
        super().__init__(params, attack, frozen)
        if len(self.frozen) != 2:
            raise ConfigError(
                f"method 'ard' needs two models, [teacher, student]; the config lists {len(self.frozen)}"
            )
        if not self.frozen[0]:
            raise ConfigError(
                "method 'ard': models.0 is the teacher and must be a fixed, trained model: "
                "set models.0.init to its saved model file and models.0.frozen to true"
            )
        if self.frozen[1]:
            raise ConfigError("method 'ard': models.1 (the student) must not be frozen")
        self.attack = training_attack(attack, loss="ce")

    def member_roles(self, num_models: int) -> list[str]:
        return ["teacher", "student"]

    def loss(self, cohort: Cohort, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        teacher, student = cohort[0].module, cohort[1].module
        alpha, t = self.params.alpha, self.params.temperature
        with torch.no_grad():
            soft_labels = teacher(x)
        logits_adv = student(self.attack(student, x, y))
        kd = losses.distillation_kl(soft_labels, logits_adv, t) * t**2
        loss = alpha * kd
        metrics = {"kl/student": kd.detach()}
        if alpha < 1.0:
            ce = losses.cross_entropy(student(x), y)
            loss = loss + (1.0 - alpha) * ce
            metrics["ce/student"] = ce.detach()
        metrics["loss/student"] = loss.detach()
        metrics["adv_acc/student"] = accuracy(logits_adv, y)
        return StepResult(loss, metrics)
