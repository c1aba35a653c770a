"""How a grid point is chosen on the validation split.

A grid run's score is its validation robust accuracy (:func:`validation_score`). By default
the highest score wins. A plan may declare the one-standard-error rule instead
(``within_one_se: {lr: lowest}``): among the grid points whose score is within one binomial
standard error of the best one's, the one preferred by the named keys (for a learning rate,
usually the lowest). A single grid seed scores each point on a few hundred validation images,
so two rates a point apart are tied within noise, and the plain maximum then picks whichever
noise favoured, often the edge of stability; the rule, declared before any grid run, breaks
such ties towards the setting that is the safer guess.

A plan may also let a grid grow (``extend_grid: {lr: 2}``): while the highest-scoring point
(alone: not tied) sits at the smallest or largest rate, the study adds the next rate beyond
it, at the ratio of the grid's two outer rates on that side (0.05, 0.1, 0.2 -> 0.025 below,
0.4 above), trains it at the grid's seed, and scores again, at most the given number of rates
per grid. A choice at the edge of a grid says only that the best rate may lie outside it; the
rule is what a careful author does by hand, written into the plan so that every grid gets it
alike and a rerun of the plan repeats it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from mutualat.compare.plan import Plan, grid_points, setting_label
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
    extended: list[str] = field(default_factory=list)  # labels the plan's extend_grid added

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
    def tied(self) -> list[str]:
        """The points other than the chosen one (other than the highest-scoring one, where a
        rule chose below it) with exactly the highest score: a tie, which never grows a grid
        (:func:`extension`), so a choice "at the edge" tied with an inner point stays."""
        top = max(self.scores.values())
        own = self.label if self.scores[self.label] == top else self.best
        return [k for k, v in self.scores.items() if k != own and v == top]

    @property
    def note(self) -> str:
        """What the one-SE rule did, and a tie for the highest score, for the report ("" with
        neither)."""
        tied = f"tied with {', '.join(self.tied)}" if self.tied else ""
        if self.se is None:
            return f"tied for the highest score with {', '.join(self.tied)}" if tied else ""
        rule = f"one-SE rule, SE {100 * self.se:.1f} points"  # the best point's
        top = self.scores[self.label] == max(self.scores.values())
        text = f"{rule}: the highest score" if top else f"{rule}; highest: {self.best}"
        return f"{text}, {tied}" if tied else text


def choice_notes(at_edge: bool, note: str | None, extended: Iterable[str] = ()) -> str:
    """What the report and ``--status`` say beside a grid's choice: the points the plan's
    ``extend_grid`` added ("grid extended by lr0.025"), "at the edge of the grid"
    (:attr:`Selection.at_edge`), then what the one-SE rule did and a tie for the highest
    score (:attr:`Selection.note`)."""
    added = ", ".join(extended)
    return "; ".join(n for n in (f"grid extended by {added}" if added else "",
                                 "at the edge of the grid" if at_edge else "", note) if n)


def score_line(criteria: dict[str, str]) -> str:
    """The report's "Score:" line from each variant's :func:`criterion`: the most common one
    in full (the first on ties), then each other, naming together the variants that share
    it; one that differs only in what it measures (its first clause: the members a variant
    is judged by, say) is given by that clause alone, "by the same rule"."""
    listed = list(criteria.values())
    main = max(listed, key=listed.count)
    others: dict[str, list[str]] = {}
    for variant, text in criteria.items():
        if text != main:
            others.setdefault(text, []).append(variant)
    rule = main.partition("; ")[2]
    line = f"Score: {main}."
    for text, variants in others.items():
        measured, _, own = text.partition("; ")
        said = f"{measured}, by the same rule" if rule and own == rule else text
        line += f" For {', '.join(variants)}: {said}."
    return line


def grow(declared: dict[str, list[Any]], limits: dict[str, int],
         score: Callable[[list[dict[str, Any]]], list[float] | None]) -> dict[str, list[Any]]:
    """The plan's grid ``declared`` with every value :func:`extension` adds while ``score``
    (a grid's points -> their scores, None while some have not ended) lets it."""
    grid = {key: list(values) for key, values in declared.items()}
    while limits:
        settings = grid_points(grid)
        scores = score(settings)
        step = None if scores is None else extension(grid, declared, settings, scores, limits)
        if step is None:
            break
        key, value, at = step
        grid[key].insert(at, value)
    return grid


def criterion(plan: Plan, variant: str, pgd_steps: int, one_se: bool) -> str:
    """How ``variant``'s grid point was chosen, as the report's "Score:" line says it."""
    roles = plan.select_on.get(variant)
    text = (f"validation PGD-{pgd_steps} accuracy "
            f"({'last epoch' if plan.select == 'last' else 'best epoch'}, "
            f"mean over {'the trained members' if roles is None else ', '.join(roles)}), "
            f"seed {plan.grid_seed}")
    if one_se:
        text += ("; chosen by the one-standard-error rule: among the grid points within "
                 "one binomial standard error of the best score, the "
                 + ", then the ".join(f"{v} {k}" for k, v in plan.within_one_se.items()))
    grown = {k: n for k, n in plan.extend_grid.items() if len(plan.grids[variant].get(k, [])) > 1}
    if grown:
        text += ("; the grid grows while its highest score, not tied, is at its edge: "
                 + ", ".join(f"{k} by the ratio of its outer values, at most {n} "
                             f"value{'s' if n != 1 else ''}" for k, n in grown.items()))
    return text


def extension(grid: dict[str, list[Any]], declared: dict[str, list[Any]],
              settings: list[dict[str, Any]], scores: list[float],
              limits: dict[str, int]) -> tuple[str, float, int] | None:
    """The value to add to ``grid`` (the plan's ``declared`` grid and what was added so far)
    after its points ``settings`` scored ``scores``: (key, value, its index in the key's list),
    or None. Only where one point scores highest alone (a tie is no evidence that the best
    lies outside) and its value of a key in ``limits`` is the smallest or largest tried; keys
    in ``limits`` order, each until it gained its limit. The value is the outer one times the
    ratio of the two outer ones on that side, to three significant digits, and must lie beyond
    the grid; a diverged point (-inf) is never the highest."""
    best = max(scores)
    if scores.count(best) > 1:
        return None
    top = settings[scores.index(best)]
    for key, limit in limits.items():
        values = grid.get(key, [])
        if len(declared.get(key, [])) < 2 or len(values) - len(declared[key]) >= limit:
            continue
        low, high = min(values), max(values)
        if top[key] == low:
            value = float(f"{low * low / min(v for v in values if v > low):.3g}")
            beyond = 0 < value < low
        elif top[key] == high:
            value = float(f"{high * high / max(v for v in values if v < high):.3g}")
            beyond = value > high
        else:
            continue
        if beyond:  # at the edge value's end of the list (the end of a sorted one), else last
            return key, value, 0 if values.index(top[key]) == 0 else len(values)
    return None


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
