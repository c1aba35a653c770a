"""What a study's scheduler runs (a training, an evaluation, a transfer matrix) and in which
order the ready ones start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mutualat.compare.plan import Plan

# Within a seed, what a choice already made asks for starts before the grid explores further:
# a chosen run's evaluations first, so a study stopped early has its choices evaluated and no
# finished run waits long for its evaluation (an archive keeps no model files: a run left
# unevaluated there trains again).
PHASE = {"eval": -5, "table": -4, "transfer": -3, "control": -2, "chosen": -1, "grid": 0}


@dataclass
class Task:
    key: str  # unique, also the log and record file name ("/" -> "__")
    kind: str  # "train" or "eval"
    spec: dict[str, Any]  # what mutualat.compare.worker needs (plain JSON)
    priority: tuple[int, int]  # lower runs first: (the seed's place in the plan, PHASE)

    @property
    def slug(self) -> str:
        return self.key.replace("/", "__")


def judged_alone(plan: Plan, variant: str) -> list[str] | None:
    """``variant``'s select_on members, unless a figure shows it whole (None: every member)."""
    return None if variant in plan.figures.scenarios.values() else plan.select_on.get(variant)
