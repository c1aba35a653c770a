"""Adversarial Concurrent Training (ACT): Arani, Sarfraz, Zonooz, BMVC 2020 (arXiv 2008.07015).

Members: ``[natural, robust]``, trained together, each distilling the other's detached
logits with temperature ``T = 4`` and weight ``alpha = 0.9`` (docs/METHOD.md §6). The exact
formulation follows the official code (NeurAI-Lab/ACT ``train_act.py``,
``utilities/losses.py``), with ``F`` the natural and ``G`` the robust model::

    x_adv  = x + argmax_delta [(1 - alpha_R) CE(G(x + delta), y) + alpha_R KL(F(x) || G(x + delta))]
    L_F    = (1 - alpha_N) CE(F(x), y)     + alpha_N T^2 KL(softmax(G(x_adv)/T) || softmax(F(x)/T))
    L_G    = (1 - alpha_R) CE(G(x_adv), y) + alpha_R T^2 KL(softmax(F(x)/T) || softmax(G(x_adv)/T))
    L      = L_F + L_G

The targets ``G(x_adv)`` (for F) and ``F(x)`` (for G) are detached, so each model's
gradient comes from its own term only and one backward of ``L_F + L_G`` equals the official
code's two separate backward passes. The natural model learns from the robust model's
prediction on the adversarial image (not on ``x``), as in that code.

The attack (``attack_loss: "act"``) maximizes the robust model's own loss at T = 1, the
natural model's clean logits as the KL target; it is built per batch around those logits.
Two deviations from the official code, both documented choices:

- the objective is per example, ``(1 - alpha_R) CE_i + alpha_R KL_i``; the official code
  mixes a batch-*mean* CE with a batch-*summed* KL, which makes the CE weight
  ``(1 - alpha_R) / B``, dependent on the batch size;
- the start is the project PGD's random start for a custom objective (uniform in the ball
  when ``attack.random_start``), not ``x + 0.001 * N(0, 1)``.

``attack_loss: "ce"`` attacks the robust model's cross-entropy alone (Madry et al.).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from mutualat import losses
from mutualat.config import AttackConfig
from mutualat.errors import ConfigError
from mutualat.methods.attacks import training_attack
from mutualat.methods.base import Method, StepResult, accuracy, register_method
from mutualat.methods.checks import check_temperature, check_trainable, check_weight

if TYPE_CHECKING:
    from mutualat.train.cohort import Cohort

ATTACK_LOSSES = ("act", "ce")


@dataclass
class ACTParams:
    alpha_natural: float = 0.9  # weight of the natural model's distillation term
    alpha_robust: float = 0.9  # weight of the robust model's distillation term (and in its attack)
    temperature: float = 4.0  # distillation temperature T; the KL terms are scaled by T^2
    attack_loss: str = "act"  # "act": robust model's CE + KL to the natural model; "ce"

    def validate(self) -> None:
        check_weight("method.params.alpha_natural", self.alpha_natural)
        check_weight("method.params.alpha_robust", self.alpha_robust)
        check_temperature(self.temperature)
        if self.attack_loss not in ATTACK_LOSSES:
            raise ConfigError(
                f"method.params.attack_loss must be one of {', '.join(ATTACK_LOSSES)}, "
                f"got {self.attack_loss!r}"
            )


def act_attack_objective(
    logits_adv: torch.Tensor,
    y: torch.Tensor,
    logits_clean: torch.Tensor | None,
    natural_logits: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """Per-example ``(1 - alpha) CE(G(x'), y) + alpha KL(F(x) || G(x'))``, shape ``(B,)``.

    ``logits_clean`` (the robust model's own clean logits, passed by PGD) is not used: the
    KL target is the natural model's prediction ``natural_logits``.
    """
    ce = losses.cross_entropy(logits_adv, y, reduction="none")
    kl = losses.kl_divergence(natural_logits, logits_adv, reduction="none")
    return (1.0 - alpha) * ce + alpha * kl


@register_method("act")
class ACT(Method):
    Params = ACTParams

    def __init__(self, params: ACTParams, attack: AttackConfig, frozen) -> None:
        super().__init__(params, attack, frozen)
        if len(self.frozen) != 2:
            raise ConfigError(
                f"method 'act' needs two models, [natural, robust]; the config lists {len(self.frozen)}"
            )
        check_trainable("act", self.frozen)
        self._ce_attack = training_attack(attack, loss="ce")

    def member_roles(self, num_models: int) -> list[str]:
        return ["natural", "robust"]

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, natural_logits: torch.Tensor
    ) -> torch.Tensor:
        """The robust model's adversarial batch; ``natural_logits`` (detached) is F(x)."""
        if self.params.attack_loss == "ce":
            return self._ce_attack(model, x, y)
        objective = partial(
            act_attack_objective, natural_logits=natural_logits, alpha=self.params.alpha_robust
        )
        return training_attack(self.attack_cfg, loss=objective)(model, x, y)

    def loss(self, cohort: Cohort, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        natural, robust = cohort[0].module, cohort[1].module
        nat_frozen, rob_frozen = cohort[0].frozen, cohort[1].frozen
        p, t = self.params, self.params.temperature

        with torch.no_grad() if nat_frozen else contextlib.nullcontext():
            logits_nat = natural(x)
        x_adv = self.attack(robust, x, y, logits_nat.detach())
        with torch.no_grad() if rob_frozen else contextlib.nullcontext():
            logits_rob = robust(x_adv)

        total = x.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        if not nat_frozen:
            ce = losses.cross_entropy(logits_nat, y)
            kl = losses.distillation_kl(logits_rob, logits_nat, t) * t**2
            loss = (1.0 - p.alpha_natural) * ce + p.alpha_natural * kl
            total = total + loss
            metrics.update({"loss/natural": loss.detach(), "ce/natural": ce.detach(),
                            "kl/natural": kl.detach(), "acc/natural": accuracy(logits_nat, y)})
        if not rob_frozen:
            ce = losses.cross_entropy(logits_rob, y)
            kl = losses.distillation_kl(logits_nat, logits_rob, t) * t**2
            loss = (1.0 - p.alpha_robust) * ce + p.alpha_robust * kl
            total = total + loss
            metrics.update({"loss/robust": loss.detach(), "ce/robust": ce.detach(),
                            "kl/robust": kl.detach(), "adv_acc/robust": accuracy(logits_rob, y)})
        return StepResult(total, metrics)
