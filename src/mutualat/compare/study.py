"""A plan in its output folder: where each run and evaluation lives, what has finished,
which hyperparameters the validation split chose, and what can run next.

Layout of ``OUT``::

    runs/<variant>/<setting>/seed<S>/           a training run (mutualat train's folder)
    runs/<variant>/<setting>/seed<S>-init<I>/   a control member: seed S's data and order,
                                                its model initialized from seed I
    runs/.../diverged.json                      a run whose loss became NaN or infinite
    runs/<variant>/<setting>/teacher-of-seed<S>.json  a student's teacher model, by sha256
    pruned-runs/<variant>/<setting>/seed<S>/    an archived run (no model files) trained again
    evals/<variant>/<setting>/seed<S>/<last|best>/  the suite on the chosen setting's models
                                                (+ ensemble); one task evaluates both checkpoints
    evals/control/<setting>/seed<S>/<last|best>/    the control ensemble (ensembles' checkpoints)
    tasks/<task>.json                           wall and CPU seconds of each task's runs
    logs/<task>.log                             each task's output
    comparison.json, comparison.md, curves.png  the report (mutualat.compare.report)

Everything here is derived from the files: a study stopped at any point continues where it
was when the same plan runs again, reusing every finished run and evaluation. A finished run
is reused only if its config is the plan's (else the study stops and says what differs), and
an evaluation lives under the setting it evaluated, so a grid extended later never reports
an old choice's numbers under a new one. (Folders of the layout before 2026-11-30,
``evals/<variant>/seed<S>``, are not read: such evaluations run again.)
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from mutualat.compare.plan import Plan, grid_points, setting_label
from mutualat.compare.records import (evaluation_holds, file_digest, model_files, pruned,
                                      suite_record, teacher_record)
from mutualat.compare.selection import (Selection, choose, criterion, grow, validation_images,
                                        validation_score)
from mutualat.compare.tasks import PHASE, Task, judged_alone
from mutualat.config import RunConfig, load_config, to_dict
from mutualat.errors import ConfigError
from mutualat.train.run_dir import config_difference, run_inits

DIVERGED = "diverged.json"  # written by the worker in a run folder whose loss became NaN
CONTROL = "control"
UNCHOSEN = "(chosen)"  # the setting in the key of a run waiting on its grid's choice


class Study:
    def __init__(self, plan: Plan, out: Path) -> None:
        self.plan, self.out = plan, Path(out)
        self._suites: dict[str, dict[str, Any]] = {}  # suite -> its record, as summaries keep it
        self._memo: dict[tuple[str, str], Any] | None = None  # within a snapshot(): grids, choices

    # --- where things are ---------------------------------------------------------

    def run_dir(self, variant: str, setting: dict[str, Any], seed: int,
                init_seed: int | None = None) -> Path:
        name = f"seed{seed}" + (f"-init{init_seed}" if init_seed is not None else "")
        return self.out / "runs" / variant / setting_label(setting) / name

    def eval_dir(self, variant: str, setting: dict[str, Any], seed: int, checkpoint: str) -> Path:
        return self.out / "evals" / variant / setting_label(setting) / f"seed{seed}" / checkpoint

    @staticmethod
    def finished(run_dir: Path) -> bool:
        return (run_dir / "results.json").is_file()

    def pruned(self, run_dir: Path) -> bool:
        """Whether an archive left a finished run without its model files: an evaluation still
        to run trains it again (:mod:`mutualat.compare.archive`)."""
        return self.finished(run_dir) and pruned(list(self.model_files(run_dir).values()))

    @staticmethod
    def diverged(run_dir: Path) -> bool:
        return (run_dir / DIVERGED).is_file()

    def settled(self, run_dir: Path, cfg: RunConfig, teacher: bool = False) -> bool:
        """Whether the run finished or diverged; either way only with the plan's config and,
        for a student (``teacher``), the very teacher model it was trained against: compared
        by content (:func:`teacher_record`), as the file's path changes when the study's
        folder moves."""
        if not (self.finished(run_dir) or self.diverged(run_dir)):
            return False
        saved = load_config(run_dir / "config.yaml")
        if teacher and teacher_record(run_dir).is_file():
            record = json.loads(teacher_record(run_dir).read_text())
            if record["sha256"] != file_digest(cfg.models[0].init):
                raise ConfigError(
                    f"{run_dir} was trained against another teacher model than the plan's "
                    f"current one ({cfg.models[0].init}): its teacher was trained again or "
                    "changed. Move the run away to train it again; its evaluations will then "
                    "ask to be moved too (nothing was overwritten)")
            saved.models[0].init = cfg.models[0].init
        differs = config_difference(saved, cfg, run_inits(run_dir))
        if differs:
            raise ConfigError(
                f"{run_dir} holds a run of another config than the plan's (it differs in "
                f"{differs}): the plan changed after it ran. Restore the plan, or move the run "
                "away to train it again (nothing was overwritten)")
        return True

    def evaluated(self, eval_dir: Path, suite: str | None = None, n: int | None = None,
                  files: dict[str, str] | None = None, models: list[str] | None = None) -> bool:
        """Whether ``eval_dir`` holds a finished evaluation of the suite (default: the plan's)
        and test subset asked for (:func:`mutualat.compare.records.evaluation_holds`)."""
        suite = suite or self.plan.suite
        if suite not in self._suites:
            self._suites[suite] = suite_record(suite)
        return evaluation_holds(eval_dir, suite, self._suites[suite], n or self.plan.eval.n,
                                self.plan.eval.seed, files, models)

    #: A finished run's trained members: role -> model file (:func:`.records.model_files`).
    model_files = staticmethod(model_files)

    def teacher_file(self, variant: str, seed: int) -> str | None:
        """The model file ``variant`` learns from at ``seed``: its teacher's chosen run of the
        same seed, last epoch; None while that run has not finished."""
        teacher = self.plan.teachers[variant]
        chosen = self.selection(teacher)
        if chosen is None:
            return None
        run = self.run_dir(teacher, chosen.chosen, seed)
        return next(iter(self.model_files(run).values())) if self.finished(run) else None

    def config(self, variant: str, setting: dict[str, Any], seed: int,
               init_seed: int | None = None) -> RunConfig | None:
        """The plan's config of a run, with its teacher's model file where the variant has
        one; None while that teacher has not finished."""
        if variant not in self.plan.teachers:
            return self.plan.config(variant, setting, seed, init_seed)
        teacher = self.teacher_file(variant, seed)
        return None if teacher is None else self.plan.config(variant, setting, seed, init_seed, teacher)

    # --- selection ----------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within it, each variant's grid and choice are worked out once, from the files as
        they stand: one look at the study (its tasks, its status, its report), where a student
        asks for its teacher's choice at every config. Nested, the outermost one counts."""
        outer = self._memo is not None
        self._memo = self._memo if outer else {}
        try:
            yield
        finally:
            self._memo = self._memo if outer else None

    def _remember(self, what: str, variant: str, compute: Callable[[], Any]) -> Any:
        if self._memo is None:
            return compute()
        if (what, variant) not in self._memo:
            self._memo[what, variant] = compute()
        return self._memo[what, variant]

    def grid(self, variant: str) -> dict[str, list[Any]]:
        """``variant``'s grid as this study has it: the plan's, and every value the plan's
        ``extend_grid`` added while the highest score sat at its edge
        (:func:`mutualat.compare.selection.extension`); an added value's run is then the
        grid's next task, and the choice waits on it."""
        return self._remember("grid", variant, lambda: grow(
            self.plan.grids[variant], self.plan.extend_grid,
            lambda settings: self._grid_scores(variant, settings)))

    def settings(self, variant: str) -> list[dict[str, Any]]:
        """Every grid point of ``variant`` in this study: :meth:`grid`'s."""
        return grid_points(self.grid(variant))

    def _grid_scores(self, variant: str, settings: list[dict[str, Any]]) -> list[float] | None:
        """Each grid point's score (:meth:`grid_score`) once every one has settled at the
        grid's seed, else None; a grid whose every point diverged is an error."""
        seed = self.plan.grid_seed
        dirs = [self.run_dir(variant, s, seed) for s in settings]
        configs = [self.config(variant, s, seed) for s in settings]
        teacher = variant in self.plan.teachers
        if None in configs or not all(self.settled(d, c, teacher) for c, d in zip(configs, dirs)):
            return None
        scores = [self.grid_score(variant, d) for d in dirs]
        if all(v == float("-inf") for v in scores):
            raise ConfigError(f"every grid point of {variant} diverged ({', '.join(map(str, dirs))}); "
                              "give it smaller learning rates")
        return scores

    def selection(self, variant: str) -> Selection | None:
        """The chosen grid point of ``variant`` once its grid runs (first seed) finished."""
        return self._remember("selection", variant, lambda: self._select(variant))

    def _select(self, variant: str) -> Selection | None:
        settings = self.settings(variant)
        seed = self.plan.grid_seed
        listed = self._grid_scores(variant, settings)
        if listed is None:
            return None
        labels = [setting_label(s) for s in settings]
        scores = dict(zip(labels, listed))
        dirs = [self.run_dir(variant, s, seed) for s in settings]
        # The highest score, or the plan's one-standard-error rule on the best run's images.
        rule = self.plan.within_one_se
        chosen, best, se = choose(settings, listed, rule, lambda i: validation_images(dirs[i]))
        steps = self.plan.config(variant, settings[0], seed).eval.pgd_steps
        text = criterion(self.plan, variant, steps, se is not None)
        declared = {setting_label(s) for s in self.plan.settings(variant)}
        return Selection(variant, settings[chosen], scores, text,
                         {k: s for k, s in zip(labels, settings)},
                         best=labels[best] if chosen != best else None, se=se,
                         extended=[k for k in labels if k not in declared])

    def grid_score(self, variant: str, run_dir: Path) -> float:
        """An ended grid run's validation score as the plan selects on it; -inf for one that
        diverged (the report says "diverged"), which is never chosen."""
        if self.diverged(run_dir):
            return float("-inf")
        return validation_score(run_dir, self.plan.select, self.plan.select_on.get(variant))

    def control_inits(self, seed: int) -> list[int]:
        """Initialization seeds of a control's extra members at ``seed``: as a cohort's."""
        assert self.plan.control is not None
        return [seed + k for k in range(1, self.plan.control.members)]

    # --- tasks --------------------------------------------------------------------

    def tasks(self) -> tuple[list[Task], list[str]]:
        """Tasks that can start now (not finished, dependencies met), by priority, and the keys
        of those still waiting on others; a run whose grid has yet to choose its setting is
        keyed ``train/<variant>/(chosen)/seed<S>`` (its progress.family known, not its setting).
        Seed by seed, so a study stopped early has whole seeds to report (the grid's seed
        first); within a seed, by :data:`mutualat.compare.tasks.PHASE`."""
        plan = self.plan
        ready: list[Task] = []
        waiting: list[str] = []
        selections = {v: self.selection(v) for v in plan.variants}
        for variant in plan.variants:
            for setting in self.settings(variant):
                waiting += self._train(ready, variant, setting, plan.grid_seed, (0, PHASE["grid"]))
            chosen = selections[variant]
            if chosen is None:  # its other seeds' runs, every seed's evaluation
                waiting += [f"train/{variant}/{self._unchosen(variant)}/seed{s}"
                            for s in plan.seeds if s != plan.grid_seed]
                waiting += [f"eval/{variant}/seed{s}" for s in plan.seeds]
                continue
            for rank, seed in enumerate(plan.seeds):
                run = self.run_dir(variant, chosen.chosen, seed)
                waiting += self._train(ready, variant, chosen.chosen, seed, (rank, PHASE["chosen"]))
                waiting += self._eval(ready, variant, chosen.chosen, seed, [run], True, rank)
        if plan.control is not None:
            waiting += self._control_tasks(ready, selections[plan.control.variant])
        ready.sort(key=lambda t: t.priority)
        return ready, waiting

    def _unchosen(self, variant: str) -> str:
        """The setting in the key of a run waiting on ``variant``'s grid: its only point, or
        :data:`UNCHOSEN`."""
        settings = self.plan.settings(variant)
        return setting_label(settings[0]) if len(settings) == 1 else UNCHOSEN

    def _control_tasks(self, ready: list[Task], chosen: Selection | None) -> list[str]:
        plan = self.plan
        if chosen is None:  # its extra members, its evaluations
            return [key for seed in plan.seeds for key in
                    [f"train/{plan.control.variant}/{self._unchosen(plan.control.variant)}/seed{seed}-init{i}"
                     for i in self.control_inits(seed)] + [f"eval/{CONTROL}/seed{seed}"]]
        waiting = []
        for rank, seed in enumerate(plan.seeds):
            runs = [self.run_dir(plan.control.variant, chosen.chosen, seed)]
            for init in self.control_inits(seed):
                runs.append(self.run_dir(plan.control.variant, chosen.chosen, seed, init))
                waiting += self._train(ready, plan.control.variant, chosen.chosen, seed,
                                       (rank, PHASE["control"]), init)
            waiting += self._eval(ready, CONTROL, chosen.chosen, seed, runs, False, rank)
        return waiting

    def checkpoints_of(self, name: str) -> list[str]:
        """The checkpoints evaluated for ``name``: the control is an ensemble only, so only
        at the checkpoints the plan evaluates ensembles at."""
        if name == CONTROL:
            return [c for c in self.plan.checkpoints if c in self.plan.eval.ensembles]
        return list(self.plan.checkpoints)

    def _eval(self, ready: list[Task], name: str, setting: dict[str, Any], seed: int,
              runs: list[Path], cohort: bool, rank: int) -> list[str]:
        """Add the evaluation of ``runs`` (every checkpoint not yet evaluated, one task) if
        they have finished; returns its key if it waits on them, else nothing."""
        finished = all(self.finished(r) for r in runs)
        jobs, todo = [], False  # jobs: each checkpoint's, once the runs have finished
        for c in self.checkpoints_of(name):
            job = self.eval_job(name, setting, seed, runs, c, cohort) if finished else None
            if not self.evaluated(self.eval_dir(name, setting, seed, c),
                                  files=job and job["models"],
                                  models=job and job["evaluated"] + ["ensemble"] * job["ensemble"]):
                todo = True
                if job is not None:
                    jobs.append(job)
        key = f"eval/{name}/seed{seed}"
        if not todo:
            return []
        diverged = [r for r in runs if self.diverged(r)]
        if diverged:
            raise ConfigError(f"{diverged[0]} diverged with the setting chosen on the grid's "
                              f"seed; {name} cannot be evaluated at seed {seed} (see its log)")
        if not finished:
            return [key]
        if self.train_again(ready, runs, setting, rank):
            return [key]
        spec = {"evaluations": jobs, "suite": self.plan.suite, "n": self.plan.eval.n,
                "checks": self.plan.eval.checks, **self.eval_environment()}
        ready.append(Task(key, "eval", spec, (rank, PHASE["eval"])))
        return []

    def train_again(self, ready: list[Task], runs: list[Path], setting: dict[str, Any],
                    rank: int) -> bool:
        """Add the training again of each of ``runs`` (of ``setting``, at the seed ranked
        ``rank``) an archive left without model files; whether there was one."""
        for run in filter(self.pruned, runs):
            seed, init = re.fullmatch(r"seed(\d+)(?:-init(\d+))?", run.name).groups()
            self._train(ready, run.parent.parent.name, setting, int(seed),
                        (rank, PHASE["chosen"]), init and int(init), again=True)
        return any(self.pruned(r) for r in runs)

    def _train(self, ready: list[Task], variant: str, setting: dict[str, Any], seed: int,
               priority: tuple[int, int], init_seed: int | None = None,
               again: bool = False) -> list[str]:
        """Add the run's training if it has not settled (or, ``again``, if an archive left it
        without its model files: the worker sets it aside first); returns its key if it waits
        on its teacher, else nothing."""
        run = self.run_dir(variant, setting, seed, init_seed)
        key = f"train/{variant}/{setting_label(setting)}/{run.name}"
        cfg = self.config(variant, setting, seed, init_seed)
        if cfg is None:
            return [key]
        teacher = variant in self.plan.teachers
        settled = self.settled(run, cfg, teacher) and not (again and self.pruned(run))
        if not settled and teacher and not Path(cfg.models[0].init).exists():  # archived too
            chosen = self.selection(self.plan.teachers[variant])
            self._train(ready, self.plan.teachers[variant], chosen.chosen, seed, priority, again=True)
            return [key]
        if settled or any(t.spec.get("run_dir") == str(run) for t in ready):
            return []
        spec = {"config": to_dict(cfg), "run_dir": str(run)}
        if teacher:
            spec["teacher"] = {"file": cfg.models[0].init, "sha256": file_digest(cfg.models[0].init)}
        ready.append(Task(key, "train", spec, priority))
        return []

    def eval_files(self, runs: list[Path], checkpoint: str, cohort: bool) -> dict[str, str]:
        """The model files an evaluation of ``runs`` reads, by the name it gives each: a
        cohort's roles, or a control member's run and role."""
        files = {}
        for run in runs:
            for role, file in self.model_files(run, checkpoint).items():
                files[role if cohort else f"{run.name}-{role}"] = file
        return files

    def eval_job(self, name: str, setting: dict[str, Any], seed: int, runs: list[Path],
                 checkpoint: str, cohort: bool) -> dict[str, Any] | None:
        """One checkpoint's evaluation of ``runs`` (None: nothing to evaluate there): the
        model files, the names evaluated alone, whether their ensemble is, and the folder.
        A cohort's members and their ensemble (``cohort``), or only the ensemble of
        single-model runs (the control).

        A variant with ``select_on`` is judged by those members alone (MAT-MP's generalist,
        ACT's robust model): its cohort has no ensemble, and only they are evaluated, unless a
        figure shows every member (a knowledge-distillation scenario's natural h1)."""
        roles = self.plan.select_on.get(name)
        shown = judged_alone(self.plan, name)
        files = self.eval_files(runs, checkpoint, cohort)
        ensemble = checkpoint in self.plan.eval.ensembles and len(files) > 1 and roles is None
        evaluated = list(files) if cohort else []  # the control: only its ensemble
        if shown is not None:
            evaluated = [r for r in evaluated if r in shown]
        elif cohort and self.plan.eval.members == "first":
            evaluated = evaluated[:1]
        if not evaluated and not ensemble:
            return None
        return {"models": files, "evaluated": evaluated, "ensemble": ensemble,
                "out": str(self.eval_dir(name, setting, seed, checkpoint))}

    def eval_environment(self) -> dict[str, Any]:
        """What every evaluation task shares: the data, batch size, seed and device."""
        baseline = self.plan.baseline
        data = self.plan.config(baseline, self.plan.settings(baseline)[0], self.plan.grid_seed).data
        return {"data": {"name": data.name, "data_dir": data.data_dir, "path": data.path},
                "batch_size": self.plan.eval.batch_size, "seed": self.plan.eval.seed,
                "device": self.plan.environment.get("device", "auto")}
