"""A plan file: its format, and :func:`load_plan`, which reads it into a
:class:`mutualat.compare.plan.Plan` and checks it.

A plan is a YAML file (examples in ``configs/plans/``)::

    name: fmnist-smallcnn
    base: fmnist-smallcnn-base.yaml       # a run config, relative to the plan file
    set: {optim.epochs: 50}               # overrides for every run (dotted config keys)
    variants:                             # name -> the overrides that make the variant
      at-lc: {method.name: at, method.params.loss: lc}
      mat-a0.6: {method.name: mat, method.params.alpha: 0.6, models: [smallcnn, smallcnn]}
    grid:                                 # searched per variant on the validation split
      lr: [0.025, 0.05, 0.1]              # "lr" and "weight_decay" apply to every model
    grids:                                # optional: a variant's own grid instead
      mat-a0.6: {lr: [0.05, 0.1, 0.2]}
    seeds: [0, 10, 20]                    # the grid is trained with the first seed;
                                          # cohort member k starts from seed + k
    select: last                          # the validation number that picks: last | best
    within_one_se: {lr: lowest}           # optional: the one-standard-error rule
    extend_grid: {lr: 2}                  # optional: while a grid's best (not tied) is at
                                          # its edge, add the next value beyond it (at most 2)
    checkpoints: [last, best]             # which models are evaluated and reported
    baseline: at-lc                       # paired differences are taken against it
    control: {variant: at-lc, members: 2} # compute-matched ensemble of independent runs
    suite: comparison-fmnist              # packaged suite name or a suite file
    eval: {n: 2000, batch_size: 500, seed: 0, members: all, ensembles: [last, best]}

A variant may name a ``teacher`` (a variant training one model), and a plan may add
``tables``, ``transfer`` and ``figures`` on the same chosen models, and a plan smaller than the
paper's names its full-scale twin and what it cut (``paper_scale``): :mod:`mutualat.compare.extras`.

Everything is checked when the plan is loaded, before any data is read or any run starts:
unknown keys, variant names, every (variant, grid point, seed) config, the suite.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from mutualat.config import load_config, read_yaml_file, to_dict
from mutualat.compare.extras import (check_keys, check_teachers, parse_figures, parse_paper_scale,
                                     parse_extend_grid, parse_select_on, parse_tables, parse_teacher,
                                     parse_transfer, parse_within_one_se)
from mutualat.compare.plan import CHECKPOINTS, Control, EvalSpec, Plan, setting_label
from mutualat.errors import ConfigError
from mutualat.evaluation import load_suite
from mutualat.methods import build_method

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_TOP_KEYS = {"name", "description", "base", "set", "variants", "grid", "grids", "seeds", "select",
             "checkpoints", "baseline", "control", "suite", "eval", "tables", "transfer",
             "figures", "paper_scale", "within_one_se", "extend_grid"}


def load_plan(path: str | Path, environment: dict[str, Any] | None = None) -> Plan:
    """Read and check a plan file (see the module docstring). ``environment``: config keys
    set on every run whatever the plan says (``data.data_dir``, ``device``); a data folder is
    made absolute (after ``~``), since it enters each task's spec and so its record's digest:
    typed as ``../shared/data`` after a restart, a relative one would count the study's
    interrupted tasks afresh."""
    environment = dict(environment or {})
    if isinstance(environment.get("data.data_dir"), (str, os.PathLike)):
        given = environment["data.data_dir"]
        environment["data.data_dir"] = os.path.abspath(os.path.expanduser(given))
    plan = _read_plan(Path(path), environment)
    if plan.paper_scale is not None:
        plan.twin = _load_twin(plan, environment)
    return plan


def _read_plan(path: Path, environment: dict[str, Any] | None) -> Plan:
    raw = read_yaml_file(path, "plan file")
    where = f"plan {path}"
    check_keys(raw, _TOP_KEYS, where)
    base: dict[str, Any] = {}
    if raw.get("base") is not None:
        base_path = (path.parent / raw["base"]) if not Path(raw["base"]).is_absolute() else Path(raw["base"])
        base = to_dict(load_config(base_path))
    variants = _mapping(raw.get("variants"), f"{where}: variants")
    if not variants:
        raise ConfigError(f"{where}: variants must name at least one variant")
    teachers, select_on = {}, {}
    for name, overrides in variants.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: variant name {name!r} must be letters, digits and ._+-")
        variants[name] = _mapping(overrides, f"{where}: variants.{name}")
        teacher = parse_teacher(variants[name], variants, f"{where}: variants.{name}")
        if teacher is not None:
            teachers[name] = teacher
        roles = parse_select_on(variants[name], f"{where}: variants.{name}")
        if roles is not None:
            select_on[name] = roles
    check_teachers(teachers, where)
    default_grid = _grid(raw.get("grid") or {}, f"{where}: grid")
    own = _mapping(raw.get("grids"), f"{where}: grids")
    for name in own:
        if name not in variants:
            raise ConfigError(f"{where}: grids names {name!r}, which is not a variant")
    grids = {v: _grid(own[v], f"{where}: grids.{v}") if v in own else default_grid for v in variants}
    seeds = raw.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"{where}: seeds must be a list of distinct integers >= 0, got {seeds!r}")
    select = raw.get("select", "last")
    if select not in CHECKPOINTS:
        raise ConfigError(f"{where}: select must be last or best, got {select!r}")
    checkpoints = raw.get("checkpoints", list(CHECKPOINTS))
    if (not isinstance(checkpoints, list) or not checkpoints
            or any(c not in CHECKPOINTS for c in checkpoints)):
        raise ConfigError(f"{where}: checkpoints lists last and/or best, got {checkpoints!r}")
    baseline = raw.get("baseline")
    if baseline not in variants:
        raise ConfigError(f"{where}: baseline must name a variant ({', '.join(variants)}), got {baseline!r}")
    control = None
    if raw.get("control") is not None:
        c = _mapping(raw["control"], f"{where}: control")
        if c.get("variant") not in variants or not isinstance(c.get("members"), int) or c["members"] < 2:
            raise ConfigError(f"{where}: control needs a variant (one of {', '.join(variants)}) "
                              f"and members >= 2, got {c!r}")
        control = Control(c["variant"], c["members"])
    suite = raw.get("suite")
    if not isinstance(suite, str):
        raise ConfigError(f"{where}: suite must name a packaged suite or a suite file")
    if (path.parent / suite).is_file():
        suite = str(path.parent / suite)
    ev = _mapping(raw.get("eval"), f"{where}: eval")
    check_keys(ev, {"n", "batch_size", "seed", "checks", "members", "ensembles"}, f"{where}: eval")
    if "ensembles" in ev:
        if not isinstance(ev["ensembles"], list) or any(c not in checkpoints for c in ev["ensembles"]):
            raise ConfigError(f"{where}: eval.ensembles lists checkpoints of {checkpoints}, "
                              f"got {ev['ensembles']!r}")
        ev["ensembles"] = tuple(ev["ensembles"])
    spec = EvalSpec(**ev)
    if not (isinstance(spec.n, int) and spec.n >= 1 and isinstance(spec.batch_size, int)
            and spec.batch_size >= 1):
        raise ConfigError(f"{where}: eval.n and eval.batch_size must be integers >= 1")
    if spec.members not in ("all", "first"):
        raise ConfigError(f"{where}: eval.members must be all or first, got {spec.members!r}")
    attacks = load_suite(suite).attack_ids()
    plan = Plan(
        name=str(raw.get("name") or path.stem), base=base, variants=variants, grids=grids,
        seeds=list(seeds), baseline=baseline, suite=suite, select=select,
        within_one_se=parse_within_one_se(raw.get("within_one_se"), grids, where),
        extend_grid=parse_extend_grid(raw.get("extend_grid"), grids, where),
        checkpoints=list(checkpoints), control=control, eval=spec,
        common=_mapping(raw.get("set"), f"{where}: set"), description=str(raw.get("description") or ""),
        environment=dict(environment or {}), teachers=teachers, select_on=select_on,
        tables=parse_tables(raw.get("tables"), variants, list(checkpoints), spec.n, path.parent, where),
        transfer=parse_transfer(raw.get("transfer"), variants, spec.n, where),
        figures=parse_figures(raw.get("figures"), variants, attacks, list(checkpoints), where),
        paper_scale=parse_paper_scale(raw.get("paper_scale"), path.parent, where),
    )
    check_plan(plan)
    return plan


def _load_twin(plan: Plan, environment: dict[str, Any] | None) -> Plan:
    """The paper-scale twin, which must load as a plan of its own (so a report never points
    to one that does not) and be itself at full scale."""
    where = f"plan {plan.name}: paper_scale.plan {plan.paper_scale.plan}"
    try:
        twin = _read_plan(plan.paper_scale.path, environment)  # not its twin's: no cycle
    except ConfigError as exc:
        raise ConfigError(f"{where} does not load: {exc}") from None
    if twin.paper_scale is not None:
        raise ConfigError(f"{where} has a paper_scale of its own; it should be the full-scale plan")
    return twin


def check_plan(plan: Plan) -> None:
    """Build every run config and the method of each, and load the suite, so a mistake in
    the plan stops it before anything runs."""
    suite = load_suite(plan.suite)
    balls = [(t.norm, t.eps) for t in suite.threats.values() if t.norm is not None]
    for variant in plan.variants:
        for setting in plan.settings(variant):
            for seed in plan.seeds:
                try:
                    cfg = plan.config(variant, setting, seed)
                    method = build_method(copy.deepcopy(cfg))
                except ConfigError as exc:
                    raise ConfigError(f"plan {plan.name}, variant {variant} "
                                      f"({setting_label(setting)}, seed {seed}): {exc}") from None
            # The seed does not change what a variant trains against: checked once per setting.
            _check_threats(plan, variant, setting, method.threats(), suite.name, balls)
    if plan.control is not None:
        cfg = plan.config(plan.control.variant, plan.settings(plan.control.variant)[0], plan.grid_seed)
        if len(cfg.models) != 1:
            raise ConfigError(f"plan {plan.name}: the control's variant {plan.control.variant!r} "
                              f"must train one model, it trains {len(cfg.models)}")
        if not plan.eval.ensembles:
            raise ConfigError(f"plan {plan.name}: the control is an ensemble, so eval.ensembles "
                              "must name at least one checkpoint")
    for variant, teacher in plan.teachers.items():
        cfg = plan.config(teacher, plan.settings(teacher)[0], plan.grid_seed)
        if len(cfg.models) != 1:
            raise ConfigError(f"plan {plan.name}: {variant}'s teacher {teacher!r} must train one "
                              f"model, it trains {len(cfg.models)}")
        if len(plan.config(variant, plan.settings(variant)[0], plan.grid_seed).models) < 2:
            raise ConfigError(f"plan {plan.name}: {variant} has a teacher, which takes its first "
                              "model: it needs at least two (the teacher's place and a student)")
    for variant in plan.variants:
        cfg = plan.config(variant, plan.settings(variant)[0], plan.grid_seed)
        roles = plan.select_on.get(variant)
        if roles is not None:
            method = build_method(copy.deepcopy(cfg))
            trained = [r for r, m in zip(method.roles, cfg.models) if not m.frozen]
            unknown = [r for r in roles if r not in trained]
            if unknown:
                raise ConfigError(f"plan {plan.name}: {variant}'s select_on names {unknown[0]!r}, "
                                  f"not one of its trained members ({', '.join(trained)})")
        # Validating some members only serves a variant judged by those members.
        validated = cfg.eval.val_roles
        if validated is not None and (roles is None or set(roles) - set(validated)):
            raise ConfigError(
                f"plan {plan.name}: {variant} validates only {', '.join(validated)} "
                f"(eval.val_roles), but is selected by "
                f"{', '.join(roles) if roles else 'every member'}: set select_on to "
                "members it validates, or drop eval.val_roles")
    if plan.figures.scenarios and plan.eval.members != "all":
        raise ConfigError(f"plan {plan.name}: figures.scenarios shows every member of each "
                          "scenario: set eval.members to all (it is first)")
    for variant in plan.figures.alpha:
        if "method.params.alpha" not in plan.grids[variant]:
            raise ConfigError(f"plan {plan.name}: figures.alpha names {variant}, whose grid does "
                              "not sweep method.params.alpha")
    _check_seed_spacing(plan)
    for table in plan.tables:
        load_suite(table.suite)


def _check_threats(plan: Plan, variant: str, setting: dict[str, Any], threats: list,
                   suite: str, balls: list[tuple[str, float]]) -> None:
    """Every threat ``variant`` trains against at ``setting`` is one of the main suite's
    ``balls`` (same norm and radius). A variant that names another method than the base's
    starts from that method's default parameters, and the multiple-perturbation methods
    default to the paper's CIFAR-10 threats: without this check a Fashion-MNIST plan could
    train at-avg at l-inf 0.03 and evaluate at 0.1, and no number would say so. A suite
    without lp balls (corruptions only) has nothing to compare with."""
    for threat in threats:
        if not balls or threat.steps == 0:  # nothing to compare with; natural training
            continue
        if not any(norm == threat.norm and abs(eps - threat.eps) <= 1e-9 * max(1.0, eps)
                   for norm, eps in balls):
            raise ConfigError(
                f"plan {plan.name}: variant {variant} ({setting_label(setting)}) trains against "
                f"{threat.norm} eps {threat.eps:g}, which suite {suite!r} does not evaluate (its "
                "threats: " + ", ".join(f"{n} {e:g}" for n, e in balls) + "); set the variant's "
                "attack or method.params.threats (a variant naming another method than the "
                "base's starts from that method's defaults)")


def _check_seed_spacing(plan: Plan) -> None:
    """Member k of a seed-s cohort (and of the control) starts from seed s + k: seeds closer
    than the largest cohort would give two replicates the same initial weights, and the
    paired intervals assume independent seeds."""
    size = max(len(plan.config(v, plan.settings(v)[0], plan.grid_seed).models) for v in plan.variants)
    if plan.control is not None:
        size = max(size, plan.control.members)
    seeds = sorted(plan.seeds)
    close = [(a, b) for a, b in zip(seeds, seeds[1:]) if b - a < size]
    if close:
        a, b = close[0]
        raise ConfigError(
            f"plan {plan.name}: seeds {a} and {b} are closer than the largest cohort ({size} "
            f"members, initialized from seed + 0..{size - 1}), so their runs would share initial "
            f"weights; space the seeds at least {size} apart (for example "
            f"{[seeds[0] + 10 * i for i in range(len(seeds))]})")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return dict(value)


def _grid(value: Any, where: str) -> dict[str, list[Any]]:
    grid = _mapping(value, where)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key} must be a non-empty list of values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}.{key} lists a value twice: {values!r}")
    return grid
