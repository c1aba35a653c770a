"""Robust accuracy from per-example outcomes: pure functions on numpy arrays.

The evaluator keeps, for every model, an ``outcome`` matrix ``(N, A)`` of int8 codes, one row
per example and one column per attack of the suite:

- :data:`ROBUST` (1): the attack ran on the example and failed (the model was still right);
- :data:`BROKEN` (0): the attack ran and found a misclassified point inside its threat model;
- :data:`NOT_ATTACKED` (-1): the attack did not run on the example because the example was
  already broken, by its clean image or by an earlier attack of the same threat type.

and a ``clean`` vector ``(N,)`` of bools (the model is right on the clean image).

Robust accuracy is always the per-example worst case (docs/METHOD.md §6, as AutoAttack's
robust flags): an example counts as robust against a set of attacks only if it is clean-
correct and *every* attack of the set ran and failed on it. ``NOT_ATTACKED`` therefore never
counts as robust, which is exact: an example is skipped only once it is known to be broken.

- per threat type: the worst case over the attacks of that type;
- ``R_avg``: the mean of the per-type accuracies (Maini et al. 2020, the MAT paper's Table 5);
- ``R_worst``: the worst case over all attacks of all types, per example.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

ROBUST = 1
BROKEN = 0
NOT_ATTACKED = -1


def robust_flags(outcome: np.ndarray) -> np.ndarray:
    """``(N, A)`` bool: the attack ran and failed. ``NOT_ATTACKED`` and ``BROKEN`` are False."""
    return np.asarray(outcome) == ROBUST


def _check(clean: np.ndarray, robust: np.ndarray, threats: Sequence[str] | None = None) -> None:
    if clean.ndim != 1 or robust.ndim != 2 or robust.shape[0] != clean.shape[0]:
        raise ValueError(
            f"expected clean (N,) and robust (N, A); got {clean.shape} and {robust.shape}"
        )
    if threats is not None and len(threats) != robust.shape[1]:
        raise ValueError(f"{len(threats)} threat names for {robust.shape[1]} attack columns")


def _mean(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else float("nan")


def worst_case(clean: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: clean-correct and robust against every attack (every column)."""
    clean, robust = np.asarray(clean, bool), np.asarray(robust, bool)
    _check(clean, robust)
    return clean & robust.all(axis=1)


def per_threat(clean: np.ndarray, robust: np.ndarray, threats: Sequence[str]) -> dict[str, np.ndarray]:
    """``{threat: (N,) bool}``: per example, robust against every attack of that threat type.

    Threats are returned in the order of their first attack column.
    """
    clean, robust = np.asarray(clean, bool), np.asarray(robust, bool)
    _check(clean, robust, threats)
    names = list(dict.fromkeys(threats))
    cols = np.asarray(threats)
    return {t: clean & robust[:, cols == t].all(axis=1) for t in names}


def cumulative_accuracy(clean: np.ndarray, robust: np.ndarray, threats: Sequence[str]) -> list[float]:
    """Per attack column ``j``: the accuracy against attacks ``0..j`` *of column j's threat*.

    This is the exact number when attacks only ran on examples still robust within their
    threat type (what AutoAttack reports as "robust accuracy after <attack>"): the last
    attack of a type gives that type's worst-case accuracy.
    """
    clean, robust = np.asarray(clean, bool), np.asarray(robust, bool)
    _check(clean, robust, threats)
    result = []
    alive: dict[str, np.ndarray] = {}
    for j, t in enumerate(threats):
        alive[t] = alive.get(t, clean) & robust[:, j]
        result.append(_mean(alive[t]))
    return result


def pgd_alone_columns(attacks: Iterable[tuple[str, str, str]], per_attack: str) -> dict[str, str]:
    """Per threat type, the id of the attack column that is that type's PGD alone, from the
    suite's ``(id, attack name, threat)`` in suite order: in a ``standalone`` suite the type's
    first PGD; in a ``cumulative`` one the type's first attack where it is a PGD (its column
    starts from every clean-correct example; a later column also counts the attacks before
    it). A type without such a column is left out."""
    first: dict[str, tuple[str, str]] = {}
    for attack_id, name, threat in attacks:
        if name == "pgd" or per_attack != "standalone":
            first.setdefault(threat, (attack_id, name))
    return {threat: attack_id for threat, (attack_id, name) in first.items() if name == "pgd"}


def standalone_accuracy(clean: np.ndarray, robust: np.ndarray) -> list[float]:
    """Per attack column: the accuracy under that attack alone.

    Exact only when every attack ran on every clean-correct example (the suite's
    ``per_attack: standalone`` mode); with skipping it is a lower bound.
    """
    clean, robust = np.asarray(clean, bool), np.asarray(robust, bool)
    _check(clean, robust)
    return [_mean(clean & robust[:, j]) for j in range(robust.shape[1])]


def accuracy_report(
    clean: np.ndarray,
    outcome: np.ndarray,
    attacks: Sequence[str],
    threats: Sequence[str],
    per_attack: str = "cumulative",
) -> dict:
    """All the numbers of one model from its outcome matrix (fractions in [0,1]).

    Returns ``{"clean", "attacks": {id: acc}, "threats": {threat: acc}, "r_avg", "r_worst"}``.
    ``per_attack`` says which per-attack number to give: ``"cumulative"`` (see
    :func:`cumulative_accuracy`) or ``"standalone"`` (see :func:`standalone_accuracy`).
    Per-type accuracies, ``r_avg`` and ``r_worst`` do not depend on it.
    """
    clean = np.asarray(clean, bool)
    robust = robust_flags(outcome)
    _check(clean, robust, threats)
    if len(attacks) != robust.shape[1]:
        raise ValueError(f"{len(attacks)} attack names for {robust.shape[1]} columns")
    if per_attack == "cumulative":
        per_col = cumulative_accuracy(clean, robust, threats)
    elif per_attack == "standalone":
        per_col = standalone_accuracy(clean, robust)
    else:
        raise ValueError(f"per_attack must be 'cumulative' or 'standalone', got {per_attack!r}")
    types = {t: _mean(flags) for t, flags in per_threat(clean, robust, threats).items()}
    return {
        "clean": _mean(clean),
        "attacks": dict(zip(attacks, per_col)),
        "threats": types,
        "r_avg": float(np.mean(list(types.values()))) if types else _mean(clean),
        "r_worst": _mean(worst_case(clean, robust)),
    }


def candidates(clean: np.ndarray, outcome: np.ndarray, threats: Sequence[str], threat: str) -> np.ndarray:
    """``(N,)`` bool: the examples an attack of ``threat`` still has to run on.

    Clean-correct and not broken by any attack of the same threat type that already ran
    (columns of ``outcome`` not yet run hold ``NOT_ATTACKED`` and are ignored).
    """
    clean = np.asarray(clean, bool)
    outcome = np.asarray(outcome)
    cols = np.asarray(threats) == threat
    return clean & ~(outcome[:, cols] == BROKEN).any(axis=1)
