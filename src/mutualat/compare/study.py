"""A plan in its output folder: where each run and evaluation lives, what has finished,
which hyperparameters the validation split chose, and what can run next.

Layout of ``OUT``::

    runs/<variant>/<setting>/seed<S>/           a training run (mutualat train's folder)
    runs/<variant>/<setting>/seed<S>-init<I>/   a control member: seed S's data and order,
                                                its model initialized from seed I
    evals/<variant>/seed<S>/<last|best>/        the suite on the run's models (+ ensemble);
                                                one task evaluates both checkpoints
    evals/control/seed<S>/<last|best>/          the control ensemble
    tasks/<task>.json                           wall and CPU seconds of each task's runs
    logs/<task>.log                             each task's output
    comparison.json, comparison.md, curves.png  the report (mutualat.compare.report)

Everything here is derived from the files: a study stopped at any point continues where it
was when the same plan runs again, reusing every finished run and evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mutualat.compare.plan import Plan, setting_label
from mutualat.config import to_dict
from mutualat.errors import ConfigError
from mutualat.train.logger import read_metrics

CONTROL = "control"


@dataclass
class Task:
    key: str  # unique, also the log and record file name ("/" -> "__")
    kind: str  # "train" or "eval"
    spec: dict[str, Any]  # what mutualat.compare.worker needs (plain JSON)
    priority: tuple[int, int]  # lower runs first: (the seed's place in the plan, phase)

    @property
    def slug(self) -> str:
        return self.key.replace("/", "__")


@dataclass
class Selection:
    """The grid point chosen for one variant, and every grid point's validation score."""

    variant: str
    chosen: dict[str, Any]
    scores: dict[str, float]  # setting label -> score
    criterion: str
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> setting

    @property
    def label(self) -> str:
        return setting_label(self.chosen)

    @property
    def at_edge(self) -> bool:
        """Whether the chosen value of some swept key is the smallest or largest tried."""
        return any(len(values) > 1 and self.chosen[key] in (min(values), max(values))
                   for key, values in _swept(self.settings.values()).items())


def _swept(settings) -> dict[str, list[Any]]:
    keys: dict[str, list[Any]] = {}
    for setting in settings:
        for key, value in setting.items():
            keys.setdefault(key, [])
            if value not in keys[key] and isinstance(value, (int, float)):
                keys[key].append(value)
    return keys


def validation_score(run_dir: Path, criterion: str) -> float:
    """The run's validation robust accuracy: the mean over its trained members of the last
    epoch's (``"last"``) or of each member's best epoch's (``"best"``) value. Only the
    per-epoch validation records are read: the test split never enters a selection."""
    epochs = [r for r in read_metrics(run_dir) if r["event"] == "epoch"]
    if not epochs:
        raise ConfigError(f"{run_dir} has no validation record (is data.val_fraction 0?)")
    roles = sorted({k.split("/", 1)[1] for r in epochs for k in r
                    if k.startswith("val_pgd/") and k.count("/") == 1})
    if not roles:
        raise ConfigError(f"{run_dir} has no validation PGD accuracy")
    if criterion == "last":
        values = [epochs[-1][f"val_pgd/{role}"] for role in roles]
    else:
        values = [max(r[f"val_pgd/{role}"] for r in epochs) for role in roles]
    return sum(values) / len(values)


class Study:
    def __init__(self, plan: Plan, out: Path) -> None:
        self.plan, self.out = plan, Path(out)

    # --- where things are ---------------------------------------------------------

    def run_dir(self, variant: str, setting: dict[str, Any], seed: int,
                init_seed: int | None = None) -> Path:
        name = f"seed{seed}" + (f"-init{init_seed}" if init_seed is not None else "")
        return self.out / "runs" / variant / setting_label(setting) / name

    def eval_dir(self, variant: str, seed: int, checkpoint: str) -> Path:
        return self.out / "evals" / variant / f"seed{seed}" / checkpoint

    @staticmethod
    def finished(run_dir: Path) -> bool:
        return (run_dir / "results.json").is_file()

    @staticmethod
    def evaluated(eval_dir: Path) -> bool:
        return (eval_dir / "summary.json").is_file()

    # --- selection ----------------------------------------------------------------

    def selection(self, variant: str) -> Selection | None:
        """The chosen grid point of ``variant`` once its grid runs (first seed) finished."""
        settings = self.plan.settings(variant)
        dirs = [self.run_dir(variant, s, self.plan.grid_seed) for s in settings]
        if not all(self.finished(d) for d in dirs):
            return None
        scores = {setting_label(s): validation_score(d, self.plan.select) for s, d in zip(settings, dirs)}
        # The highest score; ties go to the earlier grid point (grid order is the plan's).
        best = max(range(len(settings)), key=lambda i: (scores[setting_label(settings[i])], -i))
        criterion = (f"validation PGD-{self.plan.config(variant, settings[0], 0).eval.pgd_steps} "
                     f"accuracy ({'last epoch' if self.plan.select == 'last' else 'best epoch'}, "
                     f"mean over the trained members), seed {self.plan.grid_seed}")
        return Selection(variant, settings[best], scores, criterion,
                         {setting_label(s): s for s in settings})

    def control_inits(self, seed: int) -> list[int]:
        """Initialization seeds of a control's extra members at ``seed``: as a cohort's."""
        assert self.plan.control is not None
        return [seed + k for k in range(1, self.plan.control.members)]

    # --- tasks --------------------------------------------------------------------

    def tasks(self) -> tuple[list[Task], int]:
        """Tasks that can start now (not finished, dependencies met), by priority, and how
        many tasks are still waiting on others.

        Seed by seed: the grid (first seed), that seed's runs and evaluations, then the next
        seed's, so a study stopped early has whole seeds to report."""
        plan = self.plan
        ready: list[Task] = []
        waiting = 0
        selections = {v: self.selection(v) for v in plan.variants}
        for variant in plan.variants:
            for setting in plan.settings(variant):
                self._train(ready, variant, setting, plan.grid_seed, (0, 0))
            chosen = selections[variant]
            if chosen is None:
                waiting += 2 * len(plan.seeds) - 1  # its other seeds' runs, every evaluation
                continue
            for rank, seed in enumerate(plan.seeds):
                run = self.run_dir(variant, chosen.chosen, seed)
                self._train(ready, variant, chosen.chosen, seed, (rank, 1))
                waiting += self._eval(ready, variant, seed, [run], True, rank)
        if plan.control is not None:
            waiting += self._control_tasks(ready, selections[plan.control.variant])
        ready.sort(key=lambda t: t.priority)
        return ready, waiting

    def _control_tasks(self, ready: list[Task], chosen: Selection | None) -> int:
        plan = self.plan
        if chosen is None:
            return len(plan.seeds) * plan.control.members  # its extra members, evaluations
        waiting = 0
        for rank, seed in enumerate(plan.seeds):
            runs = [self.run_dir(plan.control.variant, chosen.chosen, seed)]
            for init in self.control_inits(seed):
                runs.append(self.run_dir(plan.control.variant, chosen.chosen, seed, init))
                self._train(ready, plan.control.variant, chosen.chosen, seed, (rank, 2), init)
            waiting += self._eval(ready, CONTROL, seed, runs, False, rank)
        return waiting

    def _eval(self, ready: list[Task], name: str, seed: int, runs: list[Path], cohort: bool,
              rank: int) -> int:
        """Add the evaluation of ``runs`` (every checkpoint not yet evaluated, one task) if
        they have finished; returns 1 if it waits on them, else 0."""
        todo = [c for c in self.plan.checkpoints if not self.evaluated(self.eval_dir(name, seed, c))]
        if not todo:
            return 0
        if not all(self.finished(r) for r in runs):
            return 1
        ready.append(self._eval_task(f"eval/{name}/seed{seed}", name, seed, runs, todo, cohort, rank))
        return 0

    def _train(self, ready: list[Task], variant: str, setting: dict[str, Any], seed: int,
               priority: tuple[int, int], init_seed: int | None = None) -> None:
        run = self.run_dir(variant, setting, seed, init_seed)
        if self.finished(run) or any(t.spec.get("run_dir") == str(run) for t in ready):
            return
        cfg = self.plan.config(variant, setting, seed, init_seed)
        key = f"train/{variant}/{setting_label(setting)}/{run.name}"
        ready.append(Task(key, "train", {"config": to_dict(cfg), "run_dir": str(run)}, priority))

    def _eval_task(self, key: str, name: str, seed: int, runs: list[Path], checkpoints: list[str],
                   cohort: bool, rank: int) -> Task:
        """Evaluate the models of ``runs`` at each of ``checkpoints``: a cohort's members and
        their ensemble (``cohort``), or only the ensemble of single-model runs (the control)."""
        jobs = []
        for checkpoint in checkpoints:
            suffix = ".best" if checkpoint == "best" else ""
            files = {}
            for run in runs:
                roles = list(json.loads((run / "results.json").read_text())["models"])
                for role in roles:
                    label = role if cohort else f"{run.name}-{role}"
                    files[label] = str(run / "models" / f"{role}{suffix}.safetensors")
            ensemble = checkpoint in self.plan.eval.ensembles and len(files) > 1
            evaluated = list(files) if cohort else []  # the control: only its ensemble
            if cohort and self.plan.eval.members == "first":
                evaluated = evaluated[:1]
            jobs.append({"models": files, "evaluated": evaluated, "ensemble": ensemble,
                         "out": str(self.eval_dir(name, seed, checkpoint))})
        data = self.plan.config(*self._any_config()).data
        spec = {
            "evaluations": jobs, "suite": self.plan.suite,
            "data": {"name": data.name, "data_dir": data.data_dir, "path": data.path},
            "n": self.plan.eval.n, "batch_size": self.plan.eval.batch_size,
            "seed": self.plan.eval.seed, "checks": self.plan.eval.checks,
            "device": self.plan.environment.get("device", "auto"),
        }
        return Task(key, "eval", spec, (rank, 3))

    def _any_config(self) -> tuple[str, dict[str, Any], int]:
        variant = self.plan.baseline
        return variant, self.plan.settings(variant)[0], self.plan.grid_seed
