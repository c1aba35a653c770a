"""What the multiple-perturbation methods share: the threat list, its attacks, its checks.

MAT-MP (:mod:`mutualat.methods.mat_mp`) and the AT-AVG / AT-MAX / AT-MSD baselines
(:mod:`mutualat.methods.at_multi`) train against M perturbation types at once (docs/METHOD.md
§3). ``RunConfig.attack`` holds one threat, so these methods carry their list in their
own ``Params``::

    method:
      name: mat-mp
      params:
        threats:
          - {norm: linf, eps: 0.03, steps: 40, step_size: 0.003}
          - {norm: l2,   eps: 0.5,  steps: 50, step_size: 0.05}
          - {norm: l1,   eps: 12,   steps: 50, step_size: 0.05}

The default list is the paper's CIFAR-10 setting (docs/METHOD.md §4). Each threat gets one
training PGD (:func:`threat_attacks`); the MSD attack of Maini et al. (2020) runs over the
union of the list's balls (:func:`msd_attack`). From ``RunConfig.attack`` these methods use
only ``bn_mode`` (batch-norm during every training attack, docs/METHOD.md §6); its threat
remains the trainer's per-epoch validation attack.
"""

from __future__ import annotations

from dataclasses import field
from typing import Sequence

import torch

from mutualat.attacks import MSD, PGD
from mutualat.attacks.threat import Threat
from mutualat.errors import ConfigError



def paper_threats() -> list[Threat]:
    """The paper's CIFAR-10 MAT-MP setting (Sec. 3.3.1): eps (0.03, 0.5, 12), step sizes
    (0.003, 0.05, 0.05), iterations (40, 50, 50) for (linf, l2, l1)."""
    return [
        Threat("linf", 0.03, 40, 0.003),
        Threat("l2", 0.5, 50, 0.05),
        Threat("l1", 12.0, 50, 0.05),
    ]


def threats_field():
    """A dataclass field defaulting to :func:`paper_threats` (a fresh list per instance)."""
    return field(default_factory=paper_threats)


def check_threats(threats: Sequence[Threat], minimum: int = 1,
                  where: str = "method.params.threats") -> None:
    """Validate every threat; the list needs ``minimum`` entries and distinct norms (members
    and MSD's steps are named by norm)."""
    if len(threats) < minimum:
        raise ConfigError(
            f"{where} must list at least {minimum} threat(s) "
            f"({{norm, eps, steps, step_size}}), got {len(threats)}"
        )
    for i, t in enumerate(threats):  # each was validated when it was made (Threat)
        if t.steps < 1:
            raise ConfigError(f"{where}.{i}.steps must be >= 1, got {t.steps}")
    norms = [t.norm for t in threats]
    if len(set(norms)) != len(norms):
        raise ConfigError(f"{where} lists a norm twice: {norms}")


def threat_radii(threats: Sequence[Threat],
                 where: str = "method.params.threats") -> list[tuple[str, str, float]]:
    """``(config key, norm, eps)`` of every threat of the list (:meth:`Method.threat_radii`)."""
    return [(f"{where}.{i}.eps", t.norm, t.eps) for i, t in enumerate(threats)]


def check_msd_steps(value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"method.params.msd_steps must be >= 1 (or null), got {value}")


def threat_attacks(threats: Sequence[Threat], loss: str, bn_mode: str) -> list:
    """One training PGD per threat, maximizing ``loss`` (no early stop, one run)."""
    return [
        PGD(norm=t.norm, eps=t.eps, steps=t.steps, step_size=t.resolved_step_size(),
            random_start=t.random_start, loss=loss, bn_mode=bn_mode)
        for t in threats
    ]


def msd_attack(threats: Sequence[Threat], steps: int | None, loss: str, bn_mode: str):
    """Maini et al.'s MSD over the union of the threats' balls, with their step sizes.

    ``steps`` None = the largest PGD iteration count of the list (50 for the paper's
    setting, Maini et al.'s CIFAR-10 MSD count). MSD starts at ``x`` (no random start).
    """
    return MSD(
        eps={t.norm: t.eps for t in threats},
        step_size={t.norm: t.resolved_step_size() for t in threats},
        steps=steps if steps is not None else max(t.steps for t in threats),
        loss=loss,
        bn_mode=bn_mode,
    )


def pick_per_example(per_type: Sequence[torch.Tensor], k: torch.Tensor) -> torch.Tensor:
    """Row ``b`` of ``per_type[k[b]]`` for each example: ``(B, K)`` logits of the chosen type
    (detached; for metrics)."""
    stacked = torch.stack([z.detach() for z in per_type], 1)  # (B, M, K)
    return stacked[torch.arange(len(k), device=k.device), k]


def validation_attacks(threats: Sequence[Threat], steps: int) -> dict:
    """norm -> the evaluation PGD of each threat, for per-type and worst-case validation.

    Like :func:`mutualat.methods.attacks.eval_pgd`: cross-entropy, no random start, early
    stop on misclassification; the step size follows Madry's rule per norm (for l1 the
    per-coordinate move at k = 20, so the steps travel 2.5 eps in every norm).
    """
    return {
        t.norm: PGD(norm=t.norm, eps=t.eps, steps=steps, random_start=False, loss="ce",
                    early_stop=True)
        for t in threats
    }
