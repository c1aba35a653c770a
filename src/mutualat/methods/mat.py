"""Mutual Adversarial Training (MAT) for a cohort of N >= 2 models, one perturbation type.

Liu, Lau, Souri, Feizi, Chellappa, "Mutual Adversarial Training: Learning together is better
than going alone" (BMVC 2021, arXiv 2112.05005), Sec. 2.1, Eq. 1-5 and Algorithm 1
(restated in docs/METHOD.md §2)::

    L_MAT = (1 - alpha) sum_n L_C(p_n(x_adv_n), y)
            + alpha / (N - 1) sum_n sum_{m != n} KL(p_m(x) || p_n(x_adv_n))

``x_adv_n`` is crafted for member n against its own L_C (``training_attack(cfg, loss)``);
``p_m(x)``, a peer's prediction on the *clean* image, is a target: computed under
``no_grad`` so no gradient reaches the peer through it (docs/METHOD.md §6). KL sums over
classes and averages over the batch (``batchmean``).

Decisions the paper leaves open (each a documented default):

- Peer targets are computed in the mode the trainer gives each member: train mode for a
  trainable peer (batch statistics of the clean batch, as the peer-distillation codes of
  DML and ACT do with their train-mode clean forwards), eval mode for a frozen one. A
  train-mode clean forward also moves that peer's batch-norm running averages, exactly
  like TRADES's and MART's clean forwards do.
- ``temperature`` T softens both distributions and the KL is multiplied by T^2 (Hinton et
  al. 2015) so its gradient scale does not depend on T; at the paper's T = 1 this is Eq. 5.
- ``loss`` (beyond the paper, default ``"lc"``): the label term, and the objective of the
  training attack. ``"ce"`` puts Madry's cross-entropy in L_C's place, the MAT of a
  comparison whose AT baseline trains on CE: it separates what the peers teach from what
  L_C does (on Fashion-MNIST, docs/RESULTS.md, AT on L_C fell below AT on CE).
- The four knowledge-distillation scenarios of Sec. 3.2.5 are configurations of this one
  loss (see :mod:`mutualat.methods.scenarios`): ``natural`` lists members trained on clean
  images (their ``x_adv`` is replaced by ``x``), and a frozen member (``ModelConfig.frozen``,
  e.g. a teacher loaded with ``init``) only supplies its clean soft labels: it has no loss
  term of its own and no attack is crafted for it. N counts every member, frozen or not,
  so a student with one frozen teacher gets ``(1 - alpha) L_C + alpha KL(teacher || student)``.

Cost per step: one clean forward per member (reused as the target: for a natural member
it is its training forward, detached), one attack and one adversarial forward per
trainable robust member. Where the members run is the cohort's business
(:class:`mutualat.train.cohort.Cohort`): in cohort-parallel training a process computes the
targets of the members it holds and receives the others'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from mutualat import losses
from mutualat.errors import ConfigError
from mutualat.methods.attacks import training_attack
from mutualat.methods.base import Method, StepResult, accuracy, register_method
from mutualat.methods.checks import check_loss, check_temperature, check_trainable, check_weight
from mutualat.methods.peers import check_target_bn, check_warmup, scheduled_alpha

if TYPE_CHECKING:
    from mutualat.train.cohort import Cohort


@dataclass
class MATParams:
    # Weight of the peer-distillation term (Eq. 5): 0.6 for CIFAR-10, 0.45 for CIFAR-100,
    # chosen by the paper on a 20% validation split (Sec. 3.2.6).
    alpha: float = 0.6
    # Indices (into RunConfig.models) of members trained on clean images: the nat-rob
    # scenarios of Sec. 3.2.5. Empty = every member robust (rob-rob, the paper's default).
    natural: list[int] = field(default_factory=list)
    # KL temperature; the paper uses 1 (docs/METHOD.md §6). KL is scaled by T^2.
    temperature: float = 1.0
    # Beyond the paper (mutualat.methods.peers): alpha rises linearly from 0 over this
    # fraction of training; and how a peer's clean target forward treats batch-norm
    # ("update" as the paper, "keep" its running statistics, or "eval" mode).
    alpha_warmup: float = 0.0
    target_bn: str = "update"
    # Beyond the paper: the label term (and the training attack's objective), "lc" as
    # Eq. 1-5 or "ce" (Madry's cross-entropy).
    loss: str = "lc"

    def validate(self) -> None:
        check_loss(self.loss)
        check_weight("method.params.alpha", self.alpha)
        check_temperature(self.temperature)
        check_warmup(self.alpha_warmup)
        check_target_bn(self.target_bn)
        if any(i < 0 for i in self.natural):
            raise ConfigError(f"method.params.natural holds model indices >= 0, got {self.natural}")
        if len(set(self.natural)) != len(self.natural):
            raise ConfigError(f"method.params.natural lists a model twice: {self.natural}")


@register_method("mat")
class MAT(Method):
    Params = MATParams
    cohort_parallel = True  # members meet only through detached clean soft labels

    def __init__(self, params: MATParams, attack, frozen) -> None:
        super().__init__(params, attack, frozen)
        n = len(self.frozen)
        bad = [i for i in params.natural if i >= n]
        if bad:
            raise ConfigError(
                f"method.params.natural lists model index {bad[0]}, but the cohort has {n} "
                f"models (indices 0..{n - 1})"
            )
        check_trainable("mat", self.frozen)
        self.natural = set(params.natural)
        self.trainable = [i for i, f in enumerate(self.frozen) if not f]
        # Members whose clean soft label is computed (see loss()).
        self.target_members = [
            m for m in range(n)
            if (m in self.natural and m in self.trainable)
            or (params.alpha > 0 and any(k != m for k in self.trainable))
        ]
        # The training attack maximizes the label loss, L_C as in the paper (docs/METHOD.md §6).
        self.criterion = losses.CLASSIFICATION_LOSSES[params.loss]
        self.attack = training_attack(attack, loss=params.loss)

    def member_roles(self, num_models: int) -> list[str]:
        if num_models < 2:
            raise ConfigError(
                f"method 'mat' trains a cohort of N >= 2 models (Eq. 5 divides by N - 1); "
                f"the config lists {num_models}. Use method 'at' (with the same loss, 'lc' by "
                "default) for one model."
            )
        return super().member_roles(num_models)

    def loss(self, cohort: Cohort, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Eq. 5 on one batch. ``x`` (B, C, H, W) in [0,1], ``y`` (B,); returns a scalar loss."""
        n = cohort.size
        if n != len(self.frozen):
            raise ValueError(f"mat was built for {len(self.frozen)} models, got {n}")
        alpha = scheduled_alpha(self.params.alpha, self.params.alpha_warmup, self.progress)
        t = self.params.temperature

        # Clean forwards: a natural trainable member's training forward (with gradient) is
        # also its soft label for the peers; every other member's soft label is computed
        # without gradient. A member nobody learns from (the only trainable one) needs none.
        # With alpha = 0 there is no distillation term and no target is computed, so the
        # cohort trains exactly like N independent AT runs on its loss (no extra clean forwards
        # moving batch-norm statistics).
        own: dict[int, torch.Tensor] = {}  # member -> logits its own loss is computed on
        for m in self.target_members:
            if m in self.natural and m in self.trainable and cohort.holds(m):
                own[m] = cohort[m].module(x)
        targets = cohort.peer_targets(x, self.target_members, self.params.target_bn,
                                      known={m: logits.detach() for m, logits in own.items()})

        # Each robust trainable member's own adversarial batch (Alg. 1, lines 5-8).
        members = cohort.trained()
        for member in members:
            if member.index not in own:
                own[member.index] = member.module(self.attack(member.module, x, y))

        total = x.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        for member in members:
            i, role, logits = member.index, member.role, own[member.index]
            label = self.criterion(logits, y)
            kl = sum(
                (losses.distillation_kl(targets[m], logits, t) * t**2
                 for m in range(n) if m != i and m in targets),
                logits.new_zeros((), dtype=torch.float32),
            )
            member_loss = (1.0 - alpha) * label + alpha / (n - 1) * kl
            total = total + member_loss
            metrics[f"loss/{role}"] = member_loss.detach()
            metrics[f"{self.params.loss}/{role}"] = label.detach()  # lc/h1 or ce/h1
            metrics[f"kl/{role}"] = (kl / (n - 1)).detach()  # mean KL to one peer
            # Accuracy on the member's training input: x_adv, or x for a natural member.
            metrics[f"adv_acc/{role}"] = accuracy(logits, y)
        if self.params.alpha_warmup > 0:
            metrics["alpha"] = torch.tensor(alpha)
        return StepResult(total, metrics)
