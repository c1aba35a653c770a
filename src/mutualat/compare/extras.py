"""What a plan can ask for beyond its main comparison: the paper's other tables and figures
on the same chosen models (:mod:`mutualat.compare.sections` runs and reports them).

::

    tables:                       # each: one more suite on some variants' chosen models
      - name: table2              # folder name (tables/<name>/...) and the table's key
        title: "Table 2: ..."
        suite: table2-fmnist      # packaged suite name or a suite file (relative to the plan)
        variants: [at-lc, trades, mart, mat-a0.6]
        n: 1000                   # test images (default: eval.n); the same seed as eval
        checkpoint: last          # last | best (one of the plan's checkpoints)
    transfer:                     # black-box PGD from every source member onto every target's
      sources: [at-lc, trades, mart, mat-a0.6]
      targets: [mat-a0.6]
      n: 1000
      steps: 100                  # PGD (no early stop) in the base config's training threat
      step_size: 0.01
    figures:
      scenarios:                  # clean vs robust accuracy of each named variant's models
        rob-rob-online: mat-a0.6
        rob-rob-offline: mat-offline
      scenarios_attack: r_worst   # which column of the main suite is "robust"
      alpha: [mat-alpha]          # validation score against method.params.alpha of the grid
    paper_scale:                  # a plan smaller than the paper's: its full-scale twin
      plan: configs/paper/cifar10-resnet18-paper.yaml  # down from the plan's folder or a
                                  # folder above it; must load as a plan, or this plan is
                                  # refused too (--status included)
      smaller:                    # what the budget cut, and why (one entry each)
        - "cnn32 width 16 instead of ResNet-18: ..."

A variant may also name a ``teacher`` (another variant that trains one model): its first
model is then that variant's chosen model of the same seed (last epoch), loaded and frozen
(ARD's teacher, the offline knowledge-distillation scenarios' h1). And ``select_on``: the
roles whose validation score selects its grid point (default: every trained member), for a
cohort with a natural member (ACT's ``natural``, MAT's ``natural: [0]``) whose robust
accuracy should not pull the choice.

``within_one_se: {lr: lowest}`` declares the one-standard-error rule for every variant's
choice (:mod:`mutualat.compare.selection`): among the grid points within one standard error
of the best validation score, the lowest learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mutualat.errors import ConfigError

CHECKPOINTS = ("last", "best")


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    suite: str
    variants: tuple[str, ...]
    n: int
    checkpoint: str = "last"


@dataclass(frozen=True)
class TransferSpec:
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    n: int
    steps: int = 100
    step_size: float | None = None  # None: the attack's default for the threat


@dataclass(frozen=True)
class PaperScale:
    plan: str  # as written in the plan: what the report names
    path: Path  # where it was found
    smaller: tuple[str, ...]


@dataclass(frozen=True)
class FigureSpec:
    scenarios: dict[str, str] = field(default_factory=dict)  # label -> variant
    scenarios_attack: str = "r_worst"
    alpha: tuple[str, ...] = ()


def _names(value: Any, variants: dict[str, Any], where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a non-empty list of variant names, got {value!r}")
    unknown = [v for v in value if v not in variants]
    if unknown:
        raise ConfigError(f"{where} names {unknown[0]!r}, which is not a variant "
                          f"({', '.join(variants)})")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where} names a variant twice: {value!r}")
    return tuple(value)


def check_keys(raw: dict[str, Any], known: set[str], where: str) -> None:
    """A ConfigError naming ``raw``'s keys that are not ``known``, and the known ones."""
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(known))}")


def _count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where} must be an integer >= 1, got {value!r}")
    return value


def parse_tables(raw: Any, variants: dict[str, Any], checkpoints: list[str], default_n: int,
                 plan_dir: Path, where: str) -> list[TableSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: tables must be a list of tables, got {raw!r}")
    tables = []
    for i, table in enumerate(raw):
        here = f"{where}: tables[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{here} must be a mapping, got {table!r}")
        check_keys(table, {"name", "title", "suite", "variants", "n", "checkpoint"}, here)
        name = table.get("name")
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{here}: name must be letters, digits, - and _, got {name!r}")
        if name in {t.name for t in tables}:
            raise ConfigError(f"{here}: two tables are named {name!r}")
        suite = table.get("suite")
        if not isinstance(suite, str):
            raise ConfigError(f"{here}: suite must name a packaged suite or a suite file")
        if (plan_dir / suite).is_file():
            suite = str(plan_dir / suite)
        checkpoint = table.get("checkpoint", "last")
        if checkpoint not in checkpoints:
            raise ConfigError(f"{here}: checkpoint must be one of the plan's checkpoints "
                              f"{checkpoints}, got {checkpoint!r}")
        tables.append(TableSpec(name, str(table.get("title") or name), suite,
                                _names(table.get("variants"), variants, f"{here}.variants"),
                                _count(table.get("n", default_n), f"{here}.n"), checkpoint))
    return tables


def parse_transfer(raw: Any, variants: dict[str, Any], default_n: int,
                   where: str) -> TransferSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: transfer must be a mapping, got {raw!r}")
    here = f"{where}: transfer"
    check_keys(raw, {"sources", "targets", "n", "steps", "step_size"}, here)
    step_size = raw.get("step_size")
    if step_size is not None and (not isinstance(step_size, (int, float)) or step_size <= 0):
        raise ConfigError(f"{here}.step_size must be > 0, got {step_size!r}")
    return TransferSpec(_names(raw.get("sources"), variants, f"{here}.sources"),
                        _names(raw.get("targets"), variants, f"{here}.targets"),
                        _count(raw.get("n", default_n), f"{here}.n"),
                        _count(raw.get("steps", 100), f"{here}.steps"),
                        None if step_size is None else float(step_size))


def parse_figures(raw: Any, variants: dict[str, Any], attacks: list[str], checkpoints: list[str],
                  where: str) -> FigureSpec:
    if raw is None:
        return FigureSpec()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: figures must be a mapping, got {raw!r}")
    here = f"{where}: figures"
    check_keys(raw, {"scenarios", "scenarios_attack", "alpha"}, here)
    scenarios = raw.get("scenarios") or {}
    if not isinstance(scenarios, dict):
        raise ConfigError(f"{here}.scenarios must map a label to a variant, got {scenarios!r}")
    for label, variant in scenarios.items():
        if not isinstance(variant, str) or variant not in variants:
            raise ConfigError(f"{here}.scenarios.{label} names {variant!r}, which is not a variant")
    if scenarios and "last" not in checkpoints:
        raise ConfigError(f"{here}.scenarios plots the last epoch's models: add last to the "
                          f"plan's checkpoints (they are {checkpoints})")
    attack = raw.get("scenarios_attack", "r_worst")
    if attack not in ("r_worst", *attacks):
        raise ConfigError(f"{here}.scenarios_attack must be r_worst or an attack id of the suite "
                          f"({', '.join(attacks)}), got {attack!r}")
    alpha = _names(raw["alpha"], variants, f"{here}.alpha") if raw.get("alpha") else ()
    return FigureSpec(dict(scenarios), attack, alpha)


def parse_paper_scale(raw: Any, plan_dir: Path, where: str) -> PaperScale | None:
    """The ``paper_scale`` key: the twin plan's path, found beside the plan or in a folder
    above it (``configs/paper/x.yaml`` from ``configs/plans/``: written as a reader of the
    repository finds it), and the list of what this plan makes smaller and why."""
    if raw is None:
        return None
    here = f"{where}: paper_scale"
    if not isinstance(raw, dict):
        raise ConfigError(f"{here} must be a mapping with plan and smaller, got {raw!r}")
    check_keys(raw, {"plan", "smaller"}, here)
    name, smaller = raw.get("plan"), raw.get("smaller")
    if (not isinstance(name, str) or not name.strip() or Path(name).is_absolute()
            or ".." in Path(name).parts):
        raise ConfigError(f"{here}.plan must be a path down from the plan's folder or a folder "
                          f"above it (no '..'; the report prints it as written), got {name!r}")
    if (not isinstance(smaller, list) or not smaller
            or not all(isinstance(s, str) and s.strip() for s in smaller)):
        raise ConfigError(f"{here}.smaller must list what the plan makes smaller than the paper "
                          f"and why (non-empty strings), got {smaller!r}")
    folder = plan_dir.resolve()
    found = next((d / name for d in (folder, *folder.parents) if (d / name).is_file()), None)
    if found is None:
        raise ConfigError(f"{here}.plan: {name} is neither beside the plan ({plan_dir}) nor "
                          "in a folder above it")
    return PaperScale(name, found, tuple(" ".join(s.split()) for s in smaller))


def parse_teacher(overrides: dict[str, Any], variants: dict[str, Any], where: str) -> str | None:
    """Pop a variant's ``teacher`` key (a variant name) from its overrides."""
    teacher = overrides.pop("teacher", None)
    if teacher is None:
        return None
    if not isinstance(teacher, str) or teacher not in variants:
        raise ConfigError(f"{where}: teacher names {teacher!r}, which is not a variant")
    return teacher


def parse_select_on(overrides: dict[str, Any], where: str) -> list[str] | None:
    """Pop a variant's ``select_on`` key (a list of member roles) from its overrides."""
    roles = overrides.pop("select_on", None)
    if roles is None:
        return None
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise ConfigError(f"{where}: select_on must be a non-empty list of member roles, got {roles!r}")
    return roles


def check_teachers(teachers: dict[str, str], where: str) -> None:
    for variant, teacher in teachers.items():
        if teacher in teachers:
            raise ConfigError(f"{where}: variant {variant}'s teacher {teacher!r} has a teacher "
                              "itself; a teacher must be trained on its own")


def parse_within_one_se(raw: Any, grids: dict[str, dict[str, list[Any]]], where: str) -> dict[str, str]:
    """The plan's ``within_one_se`` mapping (swept key -> lowest | highest; the one-standard-
    error rule of :mod:`mutualat.compare.selection`): each key must be swept by some grid."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: within_one_se maps a grid key to lowest or highest, "
                          f"e.g. {{lr: lowest}}, got {raw!r}")
    for key, preference in raw.items():
        if preference not in ("lowest", "highest"):
            raise ConfigError(f"{where}: within_one_se.{key} must be lowest or highest, "
                              f"got {preference!r}")
        _check_swept("within_one_se", key, grids, where)
    return dict(raw)


def parse_extend_grid(raw: Any, grids: dict[str, dict[str, list[Any]]], where: str) -> dict[str, int]:
    """The plan's ``extend_grid`` mapping (lr or weight_decay -> how many values a grid may
    gain; see :func:`mutualat.compare.selection.extension`): each key must be swept by some
    grid, on positive numbers, as a geometric grid continues only there."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: extend_grid maps a grid key to how many values its grid may "
                          f"gain beyond the plan's, e.g. {{lr: 2}}, got {raw!r}")
    for key, limit in raw.items():
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ConfigError(f"{where}: extend_grid.{key} must be an integer >= 1 (how many "
                              f"values its grid may gain), got {limit!r}")
        if key not in ("lr", "weight_decay"):
            raise ConfigError(f"{where}: extend_grid grows a rate or a decay (lr, weight_decay), "
                              f"whose grids continue geometrically; got {key!r}")
        _check_swept("extend_grid", key, grids, where, positive=True)  # grows by a ratio
    return dict(raw)


def _check_swept(option: str, key: str, grids: dict[str, dict[str, list[Any]]], where: str,
                 positive: bool = False) -> None:
    """A grid key that a plan's ``option`` names: some grid sweeps it (two values or more),
    and every grid's values of it are numbers (``positive`` ones)."""
    swept = {k for grid in grids.values() for k, values in grid.items() if len(values) > 1}
    if key not in swept:
        raise ConfigError(f"{where}: {option} names {key!r}, which no grid sweeps "
                          f"({', '.join(sorted(swept)) or 'no grid has two values'})")
    values = [v for grid in grids.values() for v in grid.get(key, [])]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not positive)
               for v in values):
        raise ConfigError(f"{where}: {option} names {key!r}, whose grid values are not all "
                          f"{'positive ' if positive else ''}numbers ({values!r})")
