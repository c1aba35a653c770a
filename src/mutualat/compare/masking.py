"""What the evaluator warned about on the evaluations a report stands on: its gradient-masking
checks (a single step, random noise or a transfer attack as strong as PGD at one of the
suite's lp threats, inputs with a zero gradient, randomized or probability-like outputs,
accuracy that a large radius does not drive to chance) and attack
points outside their ball or [0, 1], each counted as a failed attack. Every warning is kept in
an evaluation's ``summary.json``; a report that left them there would let a reader take a
masked model's accuracy at its word, so each one is listed under the tables."""

from __future__ import annotations

from typing import Any

from mutualat.compare.records import read_summary
from mutualat.compare.selection import Selection
from mutualat.compare.study import CONTROL, Study


def collect(study: Study, selections: dict[str, Selection]) -> dict[str, list[str]]:
    """The warnings of each reported evaluation (every variant's chosen setting and the
    control, every seed and checkpoint), by "<variant>, seed <S>, <checkpoint>"; none where
    an evaluation raised none."""
    plan = study.plan
    names = [(v, selections[v].chosen) for v in plan.variants]
    if plan.control is not None:
        names.append((CONTROL, selections[plan.control.variant].chosen))
    found: dict[str, list[str]] = {}
    for name, setting in names:
        for checkpoint in study.checkpoints_of(name):
            for seed in plan.seeds:
                folder = study.eval_dir(name, setting, seed, checkpoint)
                if (folder / "summary.json").is_file():
                    warnings = list(read_summary(folder).get("warnings") or [])
                    if warnings:
                        found[f"{name}, seed {seed}, {checkpoint}"] = warnings
    return found


def lines(warnings: dict[str, Any]) -> list[str]:
    """The report's list of them (nothing where there are none)."""
    if not warnings:
        return []
    out = ["### Evaluator warnings", "",
           "The evaluator's gradient-masking and point checks warned on these evaluations of "
           "reported models (an accuracy so flagged may overstate robustness):", ""]
    for where, texts in warnings.items():
        out += [f"- {where}: {text}" for text in texts]
    return out + [""]
