"""MAT-MP: mutual adversarial training against multiple perturbation types.

Liu, Lau, Souri, Feizi, Chellappa, "Mutual Adversarial Training: Learning together is better
than going alone" (BMVC 2021, arXiv 2112.05005), Sec. 2.2, Eq. 6-10 (restated in
docs/METHOD.md §3). M perturbation types (``params.threats``, e.g. linf, l2, l1) and M + 1 networks:
a generalist h0 and one specialist h_m per type, in ``RunConfig.models`` order
``[generalist, specialist of threats[0], ..., specialist of threats[M-1]]``; roles
``["generalist", "linf", "l2", "l1"]`` (the specialists are named by their norm).

Specialist m (Eq. 6), trained on its own attack type only::

    L_m = (1 - a) L_C(p_m(x_adv_m^{θ_m}), y)
          + a/M sum_{n != m, 1 <= n <= M} KL(p_n(x) || p_m(x_adv_m^{θ_m}))

Generalist, ``params.generalist`` (x_adv_m^{θ_0}: the m-th type's PGD run against h0):

- ``avg`` (Eq. 7): ``1/M sum_m [(1 - a) L_C(p_0(x_adv_m^{θ_0}), y) + a KL(p_m(x) || p_0(x_adv_m^{θ_0}))]``
- ``max`` (Eq. 8): per example ``k = argmax_m L_C(p_0(x_adv_m^{θ_0}), y)``, then
  ``(1 - a) L_C(p_0(x_adv_k^{θ_0}), y) + a KL(p_k(x) || p_0(x_adv_k^{θ_0}))``, averaged over the batch
- ``msd`` (Eq. 9): ``1/M sum_m [(1 - a) L_C(p_0(x_MSD^{θ_0}), y) + a KL(p_m(x) || p_0(x_MSD^{θ_0}))]``
  with x_MSD from Maini et al.'s MSD attack maximizing L_C over the union of the balls.

Total (Eq. 10): ``L_MAT-MP = sum_{m=0..M} L_m``; the trainer takes one optimizer step per
network per batch on it (each network's parameters only receive its own term's gradient).

Decisions the paper leaves open (each a documented, configurable default):

- Who teaches a specialist. Eq. 6 as extracted reads ``a/M sum_{n != m}^{M}`` without a
  lower limit; docs/METHOD.md §3 reads ``1 <= n <= M`` (the other specialists only, M - 1 teachers,
  still divided by M), which is the default. ``generalist_teaches: true`` adds the
  generalist's clean prediction as an M-th teacher (``0 <= n <= M``, for which the factor
  1/M is exactly the mean over a specialist's peers, as 1/(N - 1) in Eq. 5).
- Every training attack (specialists', generalist's per-type PGDs, MSD) maximizes L_C, the
  training loss (docs/METHOD.md §6; beyond the paper, ``loss: ce`` puts the cross-entropy
  in L_C's place everywhere, as for MAT); specialist m and the generalist's m-th attack are
  the same PGD (``params.threats[m-1]``), run against different models.
- MAX selects by the per-example label loss (L_C) of the generalist's own forward on each
  x_adv_m (the logits that are then trained on: no extra forward); ties go to the earlier
  threat. Each type's adversarial batch is its own train-mode forward, so batch-norm
  normalizes each type separately, as in AVG (not one mixed batch as Maini et al.'s AT-MAX
  code does).
- MSD: ``msd_steps`` None = the largest PGD iteration count of the list (50 in the paper's
  setting); MSD starts at x (no random start), as Maini et al.'s.
- Peer targets ``p_n(x)``: one clean forward per teaching member and step under ``no_grad``
  (never a gradient path), in the mode the trainer gives the member (see
  :mod:`mutualat.methods.mat`); KL with temperature T (1 in the paper) times T^2, summed over
  classes, batch mean. With ``alpha = 0`` no target is computed at all.
- A frozen member (``ModelConfig.frozen``, e.g. specialists trained beforehand) only supplies
  its clean soft label: it has no loss term and no attack is crafted for it.

Cost per step, per trainable member: a specialist runs its PGD and one forward; the
generalist M PGDs and M forwards (``avg``, ``max``) or one MSD (``msd_steps`` iterations,
each one forward-backward plus M forwards) and one forward; plus one clean forward per
teaching member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mutualat import losses
from mutualat.errors import ConfigError
from mutualat.attacks.threat import Threat
from mutualat.methods.base import Method, StepResult, accuracy, register_method
from mutualat.methods.checks import check_loss, check_temperature, check_trainable, check_weight
from mutualat.methods.peers import check_target_bn, check_warmup, scheduled_alpha
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

GENERALIST_STRATEGIES = ("avg", "max", "msd")
GENERALIST = "generalist"  # the generalist's role (member 0)


@dataclass
class MATMPParams:
    generalist: str = "avg"  # how h0 is trained: "avg" (Eq. 7), "max" (Eq. 8), "msd" (Eq. 9)
    # Weight of the distillation terms. The paper gives no alpha for MAT-MP; 0.6 is its
    # CIFAR-10 value for MAT (Sec. 3.2.6). Tune it with the alpha search (validation split).
    alpha: float = 0.6
    # The M >= 2 perturbation types; default: the paper's CIFAR-10 setting (Sec. 3.3.1).
    threats: list[Threat] = threats_field()
    msd_steps: int | None = None  # MSD iterations for generalist "msd"; None = max threat steps
    temperature: float = 1.0  # KL temperature, 1 in the paper; KL is scaled by T^2
    # Also distill the generalist's clean prediction into every specialist (see the module
    # docstring: docs/METHOD.md §3 reads Eq. 6 as specialists-only, the default).
    generalist_teaches: bool = False
    # Beyond the paper, as for MAT (mutualat.methods.peers): alpha's linear warm-up over
    # this fraction of training, and how a peer's target forward treats batch-norm.
    alpha_warmup: float = 0.0
    target_bn: str = "update"
    # Beyond the paper, as for MAT: the label term and every training attack's objective,
    # "lc" as Eq. 6-9 or "ce" (the loss of Maini et al.'s AT-MAX / AVG / MSD).
    loss: str = "lc"

    def validate(self) -> None:
        check_loss(self.loss)
        if self.generalist not in GENERALIST_STRATEGIES:
            raise ConfigError(
                f"method.params.generalist must be one of {', '.join(GENERALIST_STRATEGIES)}, "
                f"got {self.generalist!r}"
            )
        check_weight("method.params.alpha", self.alpha)
        check_temperature(self.temperature)
        check_warmup(self.alpha_warmup)
        check_target_bn(self.target_bn)
        # The paper's M >= 2 (Sec. 2.2): with one type there is nothing to generalize over.
        check_threats(self.threats, minimum=2)
        check_msd_steps(self.msd_steps)


@register_method("mat-mp")
class MATMP(Method):
    Params = MATMPParams
    cohort_parallel = True  # members meet only through detached clean soft labels

    def __init__(self, params: MATMPParams, attack, frozen) -> None:
        self.norms = [t.norm for t in params.threats]  # member_roles needs them
        super().__init__(params, attack, frozen)
        check_trainable("mat-mp", self.frozen)
        self.trainable = [i for i, f in enumerate(self.frozen) if not f]
        m = len(self.norms)
        specialists = list(range(1, m + 1))
        # Teachers of each member: the generalist learns from every specialist (its m-th
        # term from specialist m); a specialist from the other specialists (+ h0 on request).
        self.teachers: dict[int, list[int]] = {0: specialists}
        for i in specialists:
            self.teachers[i] = [n for n in specialists if n != i] + ([0] if params.generalist_teaches else [])
        # Members whose clean soft label some trainable member needs (none when alpha = 0).
        self.target_members = sorted(
            {n for i in self.trainable for n in self.teachers[i]} if params.alpha > 0 else set()
        )
        # Training attacks maximize the label loss, L_C by default (docs/METHOD.md §6);
        # attacks[m - 1] is type m's PGD.
        self.criterion = losses.CLASSIFICATION_LOSSES[params.loss]
        self.attacks = threat_attacks(params.threats, params.loss, attack.bn_mode)
        self.msd = (msd_attack(params.threats, params.msd_steps, params.loss, attack.bn_mode)
                    if params.generalist == "msd" else None)

    def member_roles(self, num_models: int) -> list[str]:
        roles = [GENERALIST, *self.norms]
        if num_models != len(roles):
            raise ConfigError(
                f"method 'mat-mp' with {len(self.norms)} threats trains {len(roles)} models, "
                f"a generalist and one specialist per threat (roles {roles}, in this order); "
                f"the config lists {num_models}"
            )
        return roles

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "generalist_role": GENERALIST}

    def validation_attacks(self, steps: int, step_size: float | None = None) -> dict:
        """norm -> evaluation PGD of each threat (for per-type and worst-case validation).

        ``step_size`` is ignored: each threat's PGD takes its own norm's default."""
        return validation_attacks(self.params.threats, steps)

    def threats(self) -> list[Threat]:
        return list(self.params.threats)

    def threat_radii(self) -> list[tuple[str, str, float]]:
        return super().threat_radii() + threat_radii(self.params.threats)

    # --- the loss -----------------------------------------------------------------------

    def alpha(self) -> float:
        """This step's distillation weight (``alpha`` after its warm-up)."""
        return scheduled_alpha(self.params.alpha, self.params.alpha_warmup, self.progress)

    def _kd(self, target: torch.Tensor, logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        t = self.params.temperature
        return losses.distillation_kl(target, logits, t, reduction) * t**2

    def loss(self, cohort: Cohort, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Eq. 10 on one batch. ``x`` (B, C, H, W) in [0,1], ``y`` (B,); returns a scalar loss."""
        if cohort.size != len(self.frozen):
            raise ValueError(f"mat-mp was built for {len(self.frozen)} models, got {cohort.size}")
        targets = cohort.peer_targets(x, self.target_members, self.params.target_bn)
        total = x.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        for member in cohort.trained():
            i, model = member.index, member.module
            if i == 0:
                member_loss = self._generalist(model, x, y, targets, metrics)
            else:
                member_loss = self._specialist(i, model, x, y, targets, metrics)
            metrics[f"loss/{self.roles[i]}"] = member_loss.detach()
            total = total + member_loss
        return StepResult(total, metrics)

    def _specialist(self, i: int, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    targets: dict[int, torch.Tensor], metrics: dict) -> torch.Tensor:
        """Eq. 6 for specialist ``i`` (1..M) on its own type's adversarial batch."""
        alpha, m = self.alpha(), len(self.norms)
        role = self.roles[i]
        logits = model(self.attacks[i - 1](model, x, y))
        label = self.criterion(logits, y)
        teachers = [n for n in self.teachers[i] if n in targets]
        kl = sum((self._kd(targets[n], logits) for n in teachers), logits.new_zeros((), dtype=torch.float32))
        metrics[f"{self.params.loss}/{role}"] = label.detach()
        metrics[f"kl/{role}"] = (kl / max(len(teachers), 1)).detach()  # mean KL to one teacher
        metrics[f"adv_acc/{role}"] = accuracy(logits, y)
        return (1.0 - alpha) * label + alpha / m * kl

    def _generalist(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    targets: dict[int, torch.Tensor], metrics: dict) -> torch.Tensor:
        alpha, m = self.alpha(), len(self.norms)
        use_kl = alpha > 0
        if self.params.generalist == "msd":  # Eq. 9: one MSD batch, every specialist teaches
            logits = model(self.msd(model, x, y))
            label = self.criterion(logits, y)
            kl = (sum(self._kd(targets[n], logits) for n in range(1, m + 1)) / m
                  if use_kl else torch.zeros_like(label))
            metrics[f"adv_acc/{GENERALIST}"] = accuracy(logits, y)
        else:
            per_type = [model(attack(model, x, y)) for attack in self.attacks]  # x_adv_m^{θ_0}
            for norm, logits in zip(self.norms, per_type):
                metrics[f"adv_acc/{GENERALIST}/{norm}"] = accuracy(logits, y)
            if self.params.generalist == "avg":  # Eq. 7
                label = sum(self.criterion(z, y) for z in per_type) / m
                kl = (sum(self._kd(targets[n + 1], z) for n, z in enumerate(per_type)) / m
                      if use_kl else torch.zeros_like(label))
                metrics[f"adv_acc/{GENERALIST}"] = sum(accuracy(z, y) for z in per_type) / m
            else:  # "max", Eq. 8: per example the type with the highest label loss for h0
                labels = torch.stack([self.criterion(z, y, "none") for z in per_type], 1)
                k = labels.argmax(dim=1)  # (B,); ties: the first (earliest) type
                label = labels.gather(1, k[:, None]).squeeze(1).mean()
                if use_kl:
                    kls = torch.stack([self._kd(targets[n + 1], z, "none")
                                       for n, z in enumerate(per_type)], 1)
                    kl = kls.gather(1, k[:, None]).squeeze(1).mean()
                else:
                    kl = torch.zeros_like(label)
                picked = pick_per_example(per_type, k)
                metrics[f"adv_acc/{GENERALIST}"] = accuracy(picked, y)
                for j, norm in enumerate(self.norms):
                    metrics[f"max_share/{norm}"] = (k == j).float().mean().detach()
        metrics[f"{self.params.loss}/{GENERALIST}"] = label.detach()
        metrics[f"kl/{GENERALIST}"] = kl.detach()
        return (1.0 - alpha) * label + alpha * kl

