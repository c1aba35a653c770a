"""A comparison plan: which methods, which hyperparameter grid, which seeds, which suite.

:class:`Plan` is what :func:`mutualat.compare.plan_file.load_plan` reads from a plan file
(its format is there) and checks; :meth:`Plan.config` builds each run's config from it, and
:func:`setting_label` names a grid point's folders.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from mutualat.config import RunConfig, config_from_data, set_value, to_dict
from mutualat.compare.extras import FigureSpec, PaperScale, TableSpec, TransferSpec

#: A grid point's shorthands: set on every model of the cohort.
MODEL_KEYS = ("lr", "weight_decay")
CHECKPOINTS = ("last", "best")


@dataclass(frozen=True)
class EvalSpec:
    n: int = 2000  # class-balanced, seeded subset of the test split: the same images for all
    batch_size: int = 256
    seed: int = 0  # the subset's and every attack's seed
    checks: bool = True  # the evaluator's gradient-masking checks
    # A cohort's members evaluated: "all", or "first" (h1, which starts from the same weights
    # as the single-model runs of the same seed: the tightest pairing) when the budget is short.
    members: str = "all"
    # The checkpoints at which ensembles (each cohort's, the control's) are evaluated.
    ensembles: tuple[str, ...] = CHECKPOINTS


@dataclass(frozen=True)
class Control:
    variant: str
    members: int


@dataclass
class Plan:
    name: str
    base: dict[str, Any]  # the base run config as plain data
    variants: dict[str, dict[str, Any]]  # name -> {dotted key: value}
    grids: dict[str, dict[str, list[Any]]]  # variant -> {key: values}
    seeds: list[int]
    baseline: str
    suite: str
    select: str = "last"
    within_one_se: dict[str, str] = field(default_factory=dict)  # grid key -> lowest | highest
    extend_grid: dict[str, int] = field(default_factory=dict)  # grid key -> values it may gain
    checkpoints: list[str] = field(default_factory=lambda: list(CHECKPOINTS))
    control: Control | None = None
    eval: EvalSpec = field(default_factory=EvalSpec)
    common: dict[str, Any] = field(default_factory=dict)  # the plan's `set`
    description: str = ""
    environment: dict[str, Any] = field(default_factory=dict)  # data.data_dir, device
    teachers: dict[str, str] = field(default_factory=dict)  # variant -> its teacher variant
    select_on: dict[str, list[str]] = field(default_factory=dict)  # variant -> selecting roles
    tables: list[TableSpec] = field(default_factory=list)
    transfer: TransferSpec | None = None
    figures: FigureSpec = field(default_factory=FigureSpec)
    paper_scale: PaperScale | None = None
    twin: Plan | None = None  # the paper-scale plan paper_scale names, loaded and checked

    # --- the runs -----------------------------------------------------------------

    def settings(self, variant: str) -> list[dict[str, Any]]:
        """Every grid point the plan names for ``variant``, in the grid's order (a study may
        add more: :meth:`mutualat.compare.study.Study.settings`)."""
        return grid_points(self.grids[variant])

    def config(self, variant: str, setting: dict[str, Any], seed: int,
               init_seed: int | None = None, teacher_file: str | None = None) -> RunConfig:
        """The run config of ``variant`` at grid point ``setting`` and ``seed``; ``init_seed``
        initializes the single model from another seed (a control member). A variant with a
        teacher starts its first model from ``teacher_file``, frozen (the study knows the
        file; without it the config names the teacher, enough to check the plan)."""
        data = copy.deepcopy(self.base)
        data = to_dict(config_from_data(data))
        overrides = {**self.common, **self.variants[variant]}
        if overrides.get("method.name", data["method"]["name"]) != data["method"]["name"]:
            data["method"]["params"] = {}  # another method: the base's parameters do not apply
        for key, value in overrides.items():
            set_value(data, key, copy.deepcopy(value))
        data = to_dict(config_from_data(data))  # bare model names -> mappings
        for key, value in setting.items():
            if key in MODEL_KEYS:
                for model in data["models"]:
                    model[key] = value
            else:
                set_value(data, key, copy.deepcopy(value))
        data["seed"] = seed
        if init_seed is not None:
            data["models"][0]["seed"] = init_seed
        if variant in self.teachers:
            data["models"][0]["init"] = teacher_file or f"<{self.teachers[variant]}, seed {seed}>"
            data["models"][0]["frozen"] = True
        for key, value in self.environment.items():
            set_value(data, key, value)
        return config_from_data(data)

    @property
    def grid_seed(self) -> int:
        return self.seeds[0]


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of a product grid ({key: values}), the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def setting_label(setting: dict[str, Any]) -> str:
    """A grid point as a folder name: {"lr": 0.05} -> "lr0.05"."""
    parts = []
    for key, value in setting.items():
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.split('.')[-1]}{text}")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts)) or "default"
