"""The members of a run and where they run: what a method's loss sees.

A :class:`Cohort` holds the members (role, model, optimizer, scheduler, frozen) and a
:class:`~mutualat.train.placement.Placement` that says where each one runs: all in this
process, every one in every process on a shard of the batch (data-parallel), or each on one
process (cohort-parallel). A method asks it for what it needs and never learns which:

- :meth:`Cohort.trained`: the members this process trains, in the config's order;
- :meth:`Cohort.holds` / ``cohort[i]``: whether member ``i`` runs here, and the member;
- :meth:`Cohort.peer_targets`: the detached clean logits of the members whose predictions a
  loss distils from, computed here for the members held here and received from the other
  processes for the others.

A member's :attr:`Member.module` is what a loss calls: the model, or its
DistributedDataParallel wrapper when the placement averages gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from mutualat.errors import CheckpointError
from mutualat.methods.peers import peer_logits


@dataclass
class Member:
    index: int  # position in RunConfig.models
    role: str  # "model", "h1", "generalist", "teacher", ...
    model: nn.Module
    frozen: bool  # a fixed teacher or peer: no optimizer, always in eval mode
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    module: nn.Module | None = None  # what a loss calls (the model, or its DDP wrapper)

    def __post_init__(self) -> None:
        if self.module is None:
            self.module = self.model


@dataclass
class Cohort:
    """The members this process holds (``members``), of ``size`` in all, and their placement."""

    members: list[Member]
    size: int
    placement: Any = None  # a mutualat.train.placement.Placement; None: all local
    _by_index: dict[int, Member] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_index = {m.index: m for m in self.members}

    @classmethod
    def of(cls, models: Sequence[nn.Module], method: Any = None) -> "Cohort":
        """``models``, all in this process, as a cohort for ``method`` (its roles and frozen
        flags; without a method: roles h1, h2, ..., none frozen): for calling a method's loss
        outside the trainer. The models' modes are left as they are."""
        n = len(models)
        roles = method.roles if method is not None else [f"h{i + 1}" for i in range(n)]
        frozen = method.frozen if method is not None else [False] * n
        if len(roles) != n:
            raise ValueError(f"the method was built for {len(roles)} models, got {n}")
        return cls([Member(i, roles[i], m, frozen[i]) for i, m in enumerate(models)], n)

    # --- what a method sees ----------------------------------------------------------

    def trained(self) -> list[Member]:
        """The members this process trains (not frozen), in the config's order."""
        return [m for m in self.members if not m.frozen]

    def holds(self, index: int) -> bool:
        return index in self._by_index

    def __getitem__(self, index: int) -> Member:
        return self._by_index[index]

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def peer_targets(self, x: torch.Tensor, indices: Sequence[int], target_bn: str = "update",
                     known: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """Detached clean logits ``(B, K)`` of every member in ``indices``: those held here
        computed now (in ``indices`` order, batch-norm as ``target_bn`` says, see
        :func:`mutualat.methods.peers.peer_logits`) unless ``known`` has them already, the
        others received from the processes that hold them."""
        targets = dict(known or {})
        for index in indices:
            if index not in targets and self.holds(index):
                targets[index] = peer_logits(self[index].module, x, target_bn)
        if self.placement is not None:
            targets = self.placement.exchange(targets, indices, len(x))
        return targets

    # --- what the trainer does with it -------------------------------------------------

    def train_mode(self) -> None:
        """Trainable members in train mode, frozen ones in eval mode (before every step)."""
        for m in self.members:
            m.model.train(not m.frozen)

    def zero_grad(self) -> None:
        for m in self.trained():
            m.optimizer.zero_grad(set_to_none=True)

    def step(self, grad_clip: float | None) -> None:
        """One optimizer and scheduler step of every trained member."""
        for m in self.trained():
            if grad_clip:
                nn.utils.clip_grad_norm_(m.model.parameters(), grad_clip)
            m.optimizer.step()
            m.scheduler.step()

    def learning_rates(self) -> dict[str, float]:
        return {m.role: m.optimizer.param_groups[0]["lr"] for m in self.trained()}

    def local_state(self) -> dict[int, tuple[dict, dict | None, dict | None]]:
        """This process's members: index -> (weights, optimizer state, scheduler state)."""
        return {m.index: (m.model.state_dict(),
                          m.optimizer.state_dict() if m.optimizer else None,
                          m.scheduler.state_dict() if m.scheduler else None)
                for m in self.members}

    def load_local_state(self, models: Sequence[dict | None], optimizers: Sequence[dict | None],
                         schedulers: Sequence[dict | None]) -> None:
        """Restore this process's members from a checkpoint's per-member lists."""
        for m in self.members:
            try:
                m.model.load_state_dict(models[m.index])
            except RuntimeError as exc:
                raise CheckpointError(
                    f"checkpoint weights do not fit model {m.role!r}: {str(exc)[:300]}"
                ) from None
            if m.optimizer is not None:
                m.optimizer.load_state_dict(optimizers[m.index])
                m.scheduler.load_state_dict(schedulers[m.index])
