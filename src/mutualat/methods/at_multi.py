"""Adversarial training against several perturbation types: AT-AVG, AT-MAX, AT-MSD.

The baselines of the MAT paper's Table 5 (docs/METHOD.md §3), from Tramèr & Boneh,
"Adversarial Training and Robustness for Multiple Perturbations" (NeurIPS 2019) and Maini,
Wong, Kolter, "Adversarial Robustness Against the Union of Multiple Perturbation Models"
(ICML 2020). Every trainable member is trained independently (as in :mod:`.at`) on
``params.threats`` (default: the paper's CIFAR-10 linf/l2/l1 setting):

- ``at-avg``: ``1/M sum_m loss(f(x_adv_m), y)``, one optimizer step on the mean of the
  per-type losses (not one step per type; docs/METHOD.md §6).
- ``at-max``: per example the type whose adversarial example has the highest loss,
  ``mean_b max_m loss(f(x_adv_m)_b, y_b)``. The selection uses the same forwards that are
  trained on (each type's batch its own forward, so batch-norm sees each type separately);
  ties go to the earlier threat.
- ``at-msd``: ``loss(f(x_MSD), y)`` with Maini et al.'s MSD over the union of the balls
  (``msd_steps`` None = the largest iteration count of the list; start at x).

``loss`` is ``"ce"`` by default (Maini et al. trained these baselines with cross-entropy) or
``"lc"`` (MART's L_C, MAT's training loss); the training attacks maximize the same loss.

The single-type baselines AT-linf, AT-l2 and AT-l1 are the plain ``at`` method with
``attack.norm`` (and its eps, steps, step_size) set to that type: no separate method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from mutualat import losses
from mutualat.attacks.threat import Threat
from mutualat.methods.base import Method, StepResult, accuracy, register_method
from mutualat.methods.checks import check_loss
from mutualat.methods.multi import (
    check_msd_steps,
    check_threats,
    msd_attack,
    pick_per_example,
    threat_attacks,
    threat_radii,
    threats_field,
    validation_attacks,
)

if TYPE_CHECKING:
    from mutualat.train.cohort import Cohort


@dataclass
class MultiATParams:
    threats: list[Threat] = threats_field()  # default: the paper's CIFAR-10 setting
    loss: str = "ce"  # "ce" (Maini et al.) or "lc"; also the training attacks' objective

    def validate(self) -> None:
        check_loss(self.loss)
        check_threats(self.threats)


@dataclass
class MSDATParams(MultiATParams):
    msd_steps: int | None = None  # MSD iterations; None = the largest threat steps

    def validate(self) -> None:
        super().validate()
        check_msd_steps(self.msd_steps)


class _MultiAT(Method):
    """Shared construction and loop; subclasses implement :meth:`member_loss`."""

    Params = MultiATParams

    def __init__(self, params: MultiATParams, attack, frozen) -> None:
        super().__init__(params, attack, frozen)
        self.criterion = losses.CLASSIFICATION_LOSSES[params.loss]
        self.norms = [t.norm for t in params.threats]
        self.attacks = threat_attacks(params.threats, params.loss, attack.bn_mode)

    def validation_attacks(self, steps: int, step_size: float | None = None) -> dict:
        """norm -> evaluation PGD of each threat (for per-type and worst-case validation).

        ``step_size`` is ignored: each threat's PGD takes its own norm's default."""
        return validation_attacks(self.params.threats, steps)

    def threats(self) -> list[Threat]:
        return list(self.params.threats)

    def threat_radii(self) -> list[tuple[str, str, float]]:
        return super().threat_radii() + threat_radii(self.params.threats)

    def member_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, role: str,
                    metrics: dict) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, cohort: Cohort, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        total = x.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        for member in cohort.trained():
            model, role = member.module, member.role
            loss = self.member_loss(model, x, y, role, metrics)
            total = total + loss
            metrics[f"loss/{role}"] = loss.detach()
        return StepResult(total, metrics)

    def _per_type(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, role: str,
                  metrics: dict) -> list[torch.Tensor]:
        """The model's logits on each type's adversarial batch (one train-mode forward each)."""
        per_type = [model(attack(model, x, y)) for attack in self.attacks]
        for norm, logits in zip(self.norms, per_type):
            metrics[f"adv_acc/{role}/{norm}"] = accuracy(logits, y)
        return per_type


@register_method("at-avg")
class ATAvg(_MultiAT):
    def member_loss(self, model, x, y, role, metrics):
        per_type = self._per_type(model, x, y, role, metrics)
        metrics[f"adv_acc/{role}"] = sum(accuracy(z, y) for z in per_type) / len(per_type)
        return sum(self.criterion(z, y) for z in per_type) / len(per_type)


@register_method("at-max")
class ATMax(_MultiAT):
    def member_loss(self, model, x, y, role, metrics):
        per_type = self._per_type(model, x, y, role, metrics)
        per_example = torch.stack([self.criterion(z, y, reduction="none") for z in per_type], 1)
        k = per_example.argmax(dim=1)  # (B,) the worst type per example; ties: the earliest
        picked = pick_per_example(per_type, k)
        metrics[f"adv_acc/{role}"] = accuracy(picked, y)
        for j, norm in enumerate(self.norms):
            metrics[f"max_share/{role}/{norm}"] = (k == j).float().mean().detach()
        return per_example.gather(1, k[:, None]).squeeze(1).mean()


@register_method("at-msd")
class ATMSD(_MultiAT):
    Params = MSDATParams

    def __init__(self, params: MSDATParams, attack, frozen) -> None:
        super().__init__(params, attack, frozen)
        self.msd = msd_attack(params.threats, params.msd_steps, params.loss, attack.bn_mode)

    def member_loss(self, model, x, y, role, metrics):
        logits = model(self.msd(model, x, y))
        metrics[f"adv_acc/{role}"] = accuracy(logits, y)
        return self.criterion(logits, y)
