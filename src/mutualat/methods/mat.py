"""Mutual Adversarial Training (MAT) for a cohort of N >= 2 models, one perturbation type.

Liu, Lau, Souri, Feizi, Chellappa, "Mutual Adversarial Training: Learning together is better
than going alone" (BMVC 2021, arXiv 2112.05005), Sec. 2.1, Eq. 1-5 and Algorithm 1
(restated in SPEC.md section 2)::

    L_MAT = (1 - alpha) sum_n L_C(p_n(x_adv_n), y)
            + alpha / (N - 1) sum_n sum_{m != n} KL(p_m(x) || p_n(x_adv_n))

``x_adv_n`` is crafted for member n against its own L_C (``training_attack(cfg, "lc")``);
``p_m(x)``, a peer's prediction on the *clean* image, is a target: computed under
``no_grad`` so no gradient reaches the peer through it (SPEC.md section 6). KL sums over
classes and averages over the batch (``batchmean``).

Decisions the paper leaves open (each a documented default):

- Peer targets are computed in the mode the trainer gives each member: train mode for a
  trainable peer (batch statistics of the clean batch, as the peer-distillation codes of
  DML and ACT do with their train-mode clean forwards), eval mode for a frozen one. A
  train-mode clean forward also moves that peer's batch-norm running averages, exactly
  like TRADES's and MART's clean forwards do.
- ``temperature`` T softens both distributions and the KL is multiplied by T^2 (Hinton et
  al. 2015) so its gradient scale does not depend on T; at the paper's T = 1 this is Eq. 5.
- The four knowledge-distillation scenarios of Sec. 3.2.5 are configurations of this one
  loss (see :mod:`mutualat.methods.scenarios`): ``natural`` lists members trained on clean
  images (their ``x_adv`` is replaced by ``x``), and a frozen member (``ModelConfig.frozen``,
  e.g. a teacher loaded with ``init``) only supplies its clean soft labels: it has no loss
  term of its own and no attack is crafted for it. N counts every member, frozen or not,
  so a student with one frozen teacher gets ``(1 - alpha) L_C + alpha KL(teacher || student)``.

Cost per step: one clean forward per member (reused as the target: for a natural member
it is its training forward, detached), one attack and one adversarial forward per
trainable robust member.

Speed: the local trainable robust members' clean forwards, attacks and adversarial
forwards can run as one batched computation (:mod:`mutualat.methods.cohort_batch`) instead
of a loop, chosen by ``RunConfig.cohort_batch`` (set with :meth:`MAT.set_cohort_batch`;
"auto" by default: the loop on the CPU, a one-off timing on accelerators). Both paths
compute the same loss; the batched one draws its random numbers for the whole cohort at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from mutualat import losses
from mutualat.errors import ConfigError
from mutualat.methods.attacks import training_attack
from mutualat.methods.base import Method, StepResult, accuracy, register_method
from mutualat.methods.cohort_batch import BatchedCohort, CohortChoice, decide, repeat_for
from mutualat.methods.peers import check_target_bn, check_warmup, peer_logits, scheduled_alpha


@dataclass
class MATParams:
    # Weight of the peer-distillation term (Eq. 5): 0.6 for CIFAR-10, 0.45 for CIFAR-100,
    # chosen by the paper on a 20% validation split (Sec. 3.2.6).
    alpha: float = 0.6
    # Indices (into RunConfig.models) of members trained on clean images: the nat-rob
    # scenarios of Sec. 3.2.5. Empty = every member robust (rob-rob, the paper's default).
    natural: list[int] = field(default_factory=list)
    # KL temperature; the paper uses 1 (SPEC.md section 6). KL is scaled by T^2.
    temperature: float = 1.0
    # Beyond the paper (mutualat.methods.peers): alpha rises linearly from 0 over this
    # fraction of training; and how a peer's clean target forward treats batch-norm
    # ("update" as the paper, "keep" its running statistics, or "eval" mode).
    alpha_warmup: float = 0.0
    target_bn: str = "update"

    def validate(self) -> None:
        check_weight("method.params.alpha", self.alpha)
        check_temperature(self.temperature)
        check_warmup(self.alpha_warmup)
        check_target_bn(self.target_bn)
        if any(i < 0 for i in self.natural):
            raise ConfigError(f"method.params.natural holds model indices >= 0, got {self.natural}")
        if len(set(self.natural)) != len(self.natural):
            raise ConfigError(f"method.params.natural lists a model twice: {self.natural}")


def check_weight(name: str, value: float) -> None:
    """A mixing weight such as alpha must lie in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")


def check_temperature(value: float, name: str = "method.params.temperature") -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def check_trainable(method: str, frozen: Sequence[bool]) -> None:
    if all(frozen):
        raise ConfigError(f"method {method!r} needs at least one model that is not frozen")


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
        # The training attack maximizes the training loss L_C (SPEC.md section 6).
        self.attack = training_attack(attack, loss="lc")
        # Batched cohort (see set_cohort_batch): members that may run as one computation.
        self.robust = [i for i in self.trainable if i not in self.natural]
        self.cohort_batch = "auto"  # RunConfig.cohort_batch
        self.cohort_choice: CohortChoice | None = None  # decided at the latest by loss()
        self._cohort: BatchedCohort | None = None

    def set_cohort_batch(self, mode: str, models: Sequence[nn.Module | None] | None = None,
                         x: torch.Tensor | None = None) -> CohortChoice | None:
        """Loop or batched cohort (``mode``: auto, batched, loop; see
        :func:`mutualat.methods.cohort_batch.decide`). Given the cohort's ``models`` and a
        batch ``x`` shaped like the training batches, decide now and return the choice;
        else the first :meth:`loss` decides."""
        self.cohort_batch, self.cohort_choice, self._cohort = mode, None, None
        if models is not None:
            self.cohort_choice = decide(mode, self._batchable(models), x)
        return self.cohort_choice

    def _batchable(self, models: Sequence[nn.Module | None]) -> list[nn.Module]:
        if self.params.target_bn != "update":
            return []  # the batched path's target forward always updates batch-norm: the loop
        return [models[i] for i in self.robust if models[i] is not None]

    def _batched_members(self, models: Sequence[nn.Module | None], x: torch.Tensor) -> list[int]:
        """The members this step runs as one batched cohort (none: the plain loop)."""
        if self.cohort_choice is None:
            self.cohort_choice = decide(self.cohort_batch, self._batchable(models), x)
        group = self._batchable(models)
        if not self.cohort_choice.batched or len(group) < 2:
            return []
        if self._cohort is None or len(self._cohort) != len(group) or any(
                a is not b for a, b in zip(self._cohort.members, group)):
            self._cohort = BatchedCohort(group)
        return [i for i in self.robust if models[i] is not None]

    def _cohort_passes(self, batched: list[int], x: torch.Tensor, y: torch.Tensor,
                       own: dict[int, torch.Tensor], targets: dict[int, torch.Tensor]) -> None:
        """The loop's three passes (clean target, attack, adversarial forward) for all
        ``batched`` members at once, on member-major rows; each member's batch-norm sees
        only its own rows, so its statistics move exactly as in the loop."""
        cohort, b, k = self._cohort, x.shape[0], len(batched)
        xs, ys = repeat_for(k, x), y.repeat(k)
        if any(i in self.target_members for i in batched):  # alpha > 0: all of them
            with torch.no_grad(), cohort.stacked(grad=False):
                clean = cohort(xs)
            targets.update({i: clean[j * b:(j + 1) * b] for j, i in enumerate(batched)})
        with cohort.stacked(grad=False):
            x_adv = self.attack(cohort, xs, ys)
        with cohort.stacked(grad=True):
            adv = cohort(x_adv)
        own.update({i: adv[j * b:(j + 1) * b] for j, i in enumerate(batched)})

    def member_roles(self, num_models: int) -> list[str]:
        if num_models < 2:
            raise ConfigError(
                f"method 'mat' trains a cohort of N >= 2 models (Eq. 5 divides by N - 1); "
                f"the config lists {num_models}. Use method 'at' with loss 'lc' for one model."
            )
        return super().member_roles(num_models)

    def loss(self, models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Eq. 5 on one batch. ``x`` (B, C, H, W) in [0,1], ``y`` (B,); returns a scalar loss."""
        n = len(models)
        if n != len(self.frozen):
            raise ValueError(f"mat was built for {len(self.frozen)} models, got {n}")
        alpha = scheduled_alpha(self.params.alpha, self.params.alpha_warmup, self.progress)
        t = self.params.temperature

        # Clean forwards: a natural trainable member's training forward (with gradient) is
        # also its soft label for the peers; every other member's soft label is computed
        # under no_grad. A member nobody learns from (the only trainable one) needs none.
        # With alpha = 0 there is no distillation term and no target is computed, so the
        # cohort trains exactly like N independent L_C-AT runs (no extra clean forwards
        # moving batch-norm statistics). Cohort-parallel training: a member held by another
        # process is None here; its soft label arrives through share_targets.
        own: dict[int, torch.Tensor] = {}  # member -> logits its own loss is computed on
        targets: dict[int, torch.Tensor] = {}  # member -> detached clean logits
        batched = self._batched_members(models, x)
        if batched:
            self._cohort_passes(batched, x, y, own, targets)
        for m in self.target_members:
            if models[m] is None or m in batched:
                continue
            if m in self.natural and m in self.trainable:
                own[m] = models[m](x)
                targets[m] = own[m].detach()
            else:
                targets[m] = peer_logits(models[m], x, self.params.target_bn)
        if self.share_targets is not None:
            targets = self.share_targets(targets, len(y))
        local = [i for i in self.trainable if models[i] is not None]

        # Each robust trainable member's own adversarial batch (Alg. 1, lines 5-8).
        for i in local:
            if i not in own:
                own[i] = models[i](self.attack(models[i], x, y))

        total = x.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        for i in local:
            role, logits = self.roles[i], own[i]
            lc = losses.boosted_cross_entropy(logits, y)
            kl = sum(
                (losses.distillation_kl(targets[m], logits, t) * t**2
                 for m in range(n) if m != i and m in targets),
                logits.new_zeros((), dtype=torch.float32),
            )
            member = (1.0 - alpha) * lc + alpha / (n - 1) * kl
            total = total + member
            metrics[f"loss/{role}"] = member.detach()
            metrics[f"lc/{role}"] = lc.detach()
            metrics[f"kl/{role}"] = (kl / (n - 1)).detach()  # mean KL to one peer
            # Accuracy on the member's training input: x_adv, or x for a natural member.
            metrics[f"adv_acc/{role}"] = accuracy(logits, y)
        if self.params.alpha_warmup > 0:
            metrics["alpha"] = torch.tensor(alpha)
        return StepResult(total, metrics)
