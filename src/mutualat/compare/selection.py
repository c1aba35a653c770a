"""How a grid point is chosen on the validation split.

A grid run's score is its validation robust accuracy (:func:`validation_score`). By default
the highest score wins. A plan may declare the one-standard-error rule instead
(``within_one_se: {lr: lowest}``): among the grid points whose score is within one binomial
standard error of the best one's, the one preferred by the named keys (for a learning rate,
usually the lowest). A single grid seed scores each point on a few hundred validation images,
so two rates a point apart are tied within noise, and the plain maximum then picks whichever
noise favoured, often the edge of stability; the rule, declared before any grid run, breaks
such ties towards the setting that is the safer guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from mutualat.compare.plan import setting_label
from mutualat.errors import ConfigError
from mutualat.train.logger import read_metrics


@dataclass
class Selection:
    """The grid point chosen for one variant, and every grid point's validation score."""

    variant: str
    chosen: dict[str, Any]
    scores: dict[str, float]  # setting label -> score
    criterion: str
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> setting
    best: str | None = None  # the highest-scoring label, where a rule chose another point
    se: float | None = None  # the standard error the one-SE rule used (a fraction)

    @property
    def label(self) -> str:
        return setting_label(self.chosen)

    @property
    def at_edge(self) -> bool:
        """Whether the highest-scoring point's value of some swept key is the smallest or
        largest tried: the grid may then not bracket the best setting. The highest-scoring
        point, not the chosen one: the one-SE rule may choose the grid's lowest rate by design."""
        top = self.settings.get(self.best, self.chosen) if self.best else self.chosen
        return any(len(values) > 1 and top[key] in (min(values), max(values))
                   for key, values in _swept(self.settings.values()).items())

    @property
    def note(self) -> str:
        """What the one-SE rule did, for the report ("" without the rule)."""
        if self.se is None:
            return ""
        rule = f"one-SE rule, SE {100 * self.se:.1f} points"  # the best point's
        return f"{rule}: the highest score" if self.best is None else f"{rule}; highest: {self.best}"


def choice_notes(at_edge: bool, note: str | None) -> str:
    """What the report and ``--status`` say beside a grid's choice: "at the edge of the grid"
    (:attr:`Selection.at_edge`), then what the one-SE rule did (:attr:`Selection.note`)."""
    return "; ".join(n for n in ("at the edge of the grid" if at_edge else "", note) if n)


def _swept(settings: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per grid key, its distinct numeric values (a switch, true / false, has no edge)."""
    keys: dict[str, list[Any]] = {}
    for setting in settings:
        for key, value in setting.items():
            if (value not in keys.setdefault(key, []) and isinstance(value, (int, float))
                    and not isinstance(value, bool)):
                keys[key].append(value)
    return keys


def _epochs(run_dir: Path) -> list[dict[str, Any]]:
    """The run's per-epoch records (validation accuracies, ``n_val``), in order."""
    return [r for r in read_metrics(run_dir) if r["event"] == "epoch"]


def validation_score(run_dir: Path, criterion: str, select_on: list[str] | None = None,
                     metric: str = "pgd") -> float:
    """The run's validation accuracy, robust (``metric="pgd"``) or clean: the mean over its
    trained members (or the roles ``select_on``) at the last epoch (``"last"``) or at each
    member's best robust epoch (``"best"``). Only the per-epoch validation records are read:
    the test split never enters a selection."""
    if metric not in ("pgd", "clean"):
        raise ConfigError(f"validation_score: metric must be pgd or clean, got {metric!r}")
    epochs = _epochs(run_dir)
    if not epochs:
        raise ConfigError(f"{run_dir} has no validation record (is data.val_fraction 0?)")
    roles = sorted({k.split("/", 1)[1] for r in epochs for k in r
                    if k.startswith("val_pgd/") and k.count("/") == 1})
    if not roles:
        raise ConfigError(f"{run_dir} has no validation PGD accuracy")
    if select_on is not None:
        missing = [r for r in select_on if r not in roles]
        if missing:
            raise ConfigError(f"{run_dir}: select_on names {missing[0]!r}, not a trained member "
                              f"({', '.join(roles)})")
        roles = select_on
    at = {role: epochs[-1] if criterion == "last" else max(epochs, key=lambda r: r[f"val_pgd/{role}"])
          for role in roles}
    return sum(at[role][f"val_{metric}/{role}"] for role in roles) / len(roles)


def validation_images(run_dir: Path) -> int:
    """How many validation images scored the run: its epoch records' ``n_val``. A run trained
    before 2026-12-02 did not record it, and its config's cap (``data.val_subset``) is not the
    count where the held-out split is smaller: such a grid cannot take the rule."""
    epochs = _epochs(run_dir)
    if not epochs or "n_val" not in epochs[-1]:
        raise ConfigError(f"{run_dir} recorded no n_val (it was trained before 2026-12-02), so "
                          "the one-standard-error rule cannot count its validation images: "
                          "train its grid again, or drop within_one_se from the plan")
    return int(epochs[-1]["n_val"])


def choose(settings: list[dict[str, Any]], scores: list[float], rule: dict[str, str],
           n_images: Callable[[int], int] | None = None) -> tuple[int, int, float | None]:
    """(chosen index, highest-scoring index, the standard error used or None). Without a
    rule the highest score
    wins (:func:`best_index`). With one, every point within one binomial standard error
    sqrt(p (1 - p) / n) of the best score p, on the ``n_images(best index)`` validation images
    that scored it, is a candidate, and the rule's keys order the candidates (the first key
    first; a key this grid does not sweep is passed over, and with none left the rule does
    not apply); a diverged point (-inf) never is a candidate."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    rule = {k: v for k, v in rule.items()
            if all(k in s for s in settings) and len({s[k] for s in settings}) > 1}
    if not rule:
        return best, best, None
    if n_images is None:
        raise ConfigError("the one-standard-error rule needs the number of validation images")
    p = scores[best]
    se = math.sqrt(max(p * (1.0 - p), 0.0) / n_images(best))
    candidates = [i for i in range(len(settings)) if scores[i] >= p - se - 1e-12]

    def order(i: int) -> tuple:
        keys = tuple(settings[i][k] if rule[k] == "lowest" else -settings[i][k] for k in rule)
        return (*keys, -scores[i], i)

    return min(candidates, key=order), best, se
