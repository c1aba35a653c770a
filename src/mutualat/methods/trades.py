"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, ICML 2019), one or several independent models.

Eq. 5 of the paper as the official code (yaodongyu/TRADES ``trades.py``) computes it::

    L = CE(f(x), y) + beta * KL(f(x) || f(x'))

with ``x'`` from PGD maximizing ``KL(f(x) || f(x'))`` (``training_attack(cfg, "trades_kl")``),
started at ``x + 0.001 * N(0, 1)`` (:class:`mutualat.attacks.PGD` does this for
``loss="trades_kl"`` when ``attack.random_start`` is true). KL sums over classes and averages
over the batch; its gradient flows through **both** ``f(x)`` and ``f(x')``, as in the official
code (this is a regularizer of the model, not distillation from a target). ``beta = 6``
(docs/METHOD.md §6). One clean forward is shared by the CE and KL terms (the official code
runs two identical ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mutualat import losses
from mutualat.errors import ConfigError
from mutualat.methods.attacks import training_attack
from mutualat.methods.base import Method, StepResult, accuracy, register_method
from mutualat.methods.checks import check_trainable

if TYPE_CHECKING:
    from mutualat.train.cohort import Cohort


@dataclass
class TRADESParams:
    beta: float = 6.0  # weight of the robustness regularizer (1/lambda in the paper)

    def validate(self) -> None:
        if not self.beta >= 0:
            raise ConfigError(f"method.params.beta must be >= 0, got {self.beta}")


@register_method("trades")
class TRADES(Method):
    Params = TRADESParams

    def __init__(self, params: TRADESParams, attack, frozen) -> None:
        super().__init__(params, attack, frozen)
        check_trainable("trades", self.frozen)
        if attack.steps > 0 and not attack.random_start:
            # KL(f(x) || f(x')) has a zero gradient at x' = x: from there PGD never moves.
            raise ConfigError(
                "method 'trades' needs attack.random_start: true (its attack starts at "
                "x + 0.001*N(0,1) because the KL gradient is zero at x itself)"
            )
        self.attack = training_attack(attack, loss="trades_kl")

    def loss(self, cohort: Cohort, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        total = x.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        for member in cohort.trained():
            model, role = member.module, member.role
            x_adv = self.attack(model, x, y)
            logits_nat = model(x)
            logits_adv = model(x_adv)
            natural = losses.cross_entropy(logits_nat, y)
            robust = losses.kl_divergence(logits_nat, logits_adv)  # gradient through both
            loss = natural + self.params.beta * robust
            total = total + loss
            metrics[f"loss/{role}"] = loss.detach()
            metrics[f"ce/{role}"] = natural.detach()
            metrics[f"kl/{role}"] = robust.detach()
            metrics[f"adv_acc/{role}"] = accuracy(logits_adv, y)
        return StepResult(total, metrics)
