"""A plan's tables, transfer matrix and figures beyond the main comparison
(:mod:`mutualat.compare.extras` says how a plan asks for them): their tasks, and their part of
the report. Every number is read from the evaluation files, like the main table's.

Layout in the study's folder, beside ``runs/`` and ``evals/``::

    tables/<table>/<variant>/<setting>/seed<S>/<checkpoint>/   the table's suite on the chosen
                                                  run's members
    transfer/seed<S>-<digest>/transfer.json       sources x targets at seed S; <digest> covers
                                                  the model files' contents and the attack's
                                                  settings, so neither a later choice nor an
                                                  edited attack reads an earlier matrix

Tables and the transfer matrix use the last checkpoint unless a table names ``best``; every
member of a cohort is a row of its own (the paper's MAT-h1 and MAT-h2), except that a variant
with ``select_on`` shows only those members in tables (ACT's robust model, not its natural).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mutualat.compare.plan import setting_label
from mutualat.compare.records import file_digest, read_summary
from mutualat.compare.selection import validation_score
from mutualat.compare.stats import mean_std, percent_mean_std
from mutualat.compare.study import Study
from mutualat.compare.tasks import PHASE, Task
from mutualat.report import paper_plots

TRANSFER = "transfer.json"


def tasks(study: Study) -> tuple[list[Task], list[str]]:
    """The study's tasks (:meth:`Study.tasks`) and those of its tables and transfer matrix,
    which start once the runs they read have finished: those ready, and the keys of those
    waiting."""
    with study.snapshot():
        return _tasks(study)


def _tasks(study: Study) -> tuple[list[Task], list[str]]:
    ready, waiting = study.tasks()
    plan = study.plan
    if not plan.tables and plan.transfer is None:
        return ready, waiting
    chosen = {v: study.selection(v) for v in plan.variants}
    for rank, seed in enumerate(plan.seeds):
        for table in plan.tables:
            for variant in table.variants:
                setting = chosen[variant].chosen if chosen[variant] is not None else None
                if setting is None or not study.finished(study.run_dir(variant, setting, seed)):
                    waiting.append(f"table/{table.name}/{variant}/seed{seed}")
                    continue
                files = table_files(study, table, variant, setting, seed)
                if study.evaluated(table_dir(study, table, variant, setting, seed), table.suite,
                                   table.n, files):
                    continue
                if study.train_again(ready, [study.run_dir(variant, setting, seed)], setting, rank):
                    waiting.append(f"table/{table.name}/{variant}/seed{seed}")
                else:
                    ready.append(_table_task(study, table, variant, setting, seed, files, rank))
        if plan.transfer is not None:
            waiting += _transfer_task(study, chosen, seed, rank, ready)
    ready.sort(key=lambda t: t.priority)
    return ready, waiting


def table_dir(study: Study, table, variant: str, setting: dict[str, Any], seed: int) -> Path:
    return (study.out / "tables" / table.name / variant / setting_label(setting) / f"seed{seed}"
            / table.checkpoint)


def table_files(study: Study, table, variant: str, setting: dict[str, Any], seed: int) -> dict[str, str]:
    """The model files a table evaluates of a run: its trained members (only the roles of
    the variant's ``select_on``, if any) at the table's checkpoint."""
    files = study.model_files(study.run_dir(variant, setting, seed), table.checkpoint)
    roles = study.plan.select_on.get(variant, list(files))  # ACT: its robust model only
    return {role: file for role, file in files.items() if role in roles}


def _table_task(study: Study, table, variant: str, setting: dict[str, Any], seed: int,
                files: dict[str, str], rank: int) -> Task:
    job = {"models": files, "evaluated": list(files), "ensemble": False,
           "out": str(table_dir(study, table, variant, setting, seed))}
    spec = {"evaluations": [job], "suite": table.suite, "n": table.n, "checks": False,
            **study.eval_environment()}
    return Task(f"table/{table.name}/{variant}/seed{seed}", "eval", spec, (rank, PHASE["table"]))


def _labelled(study: Study, variants, chosen, seed: int) -> dict[str, str] | None:
    """``{model label: file}`` of the variants' chosen runs at ``seed`` (None until all have
    finished): a single model is labelled by its variant, a cohort's members by variant-role."""
    files = {}
    for variant in variants:
        if chosen[variant] is None:
            return None
        run = study.run_dir(variant, chosen[variant].chosen, seed)
        if not study.finished(run):
            return None
        members = study.model_files(run)
        for role, file in members.items():
            files[variant if len(members) == 1 else f"{variant}-{role}"] = file
    return files


def transfer_settings(study: Study, chosen, seed: int) -> dict[str, Any]:
    """The attack and test images of the transfer matrix at ``seed``."""
    spec = study.plan.transfer
    attack = study.plan.config(spec.sources[0], chosen[spec.sources[0]].chosen, seed).attack
    return {"n": spec.n, "norm": attack.norm, "eps": attack.eps, "steps": spec.steps,
            "step_size": spec.step_size, "seed": study.plan.eval.seed}


def transfer_dir(study: Study, sources: dict[str, str], targets: dict[str, str],
                 settings: dict[str, Any], seed: int) -> Path:
    models = {role: {label: file_digest(file) for label, file in files.items()}
              for role, files in (("sources", sources), ("targets", targets))}
    key = json.dumps([models, settings], sort_keys=True).encode()
    return study.out / "transfer" / f"seed{seed}-{hashlib.sha256(key).hexdigest()[:12]}"


def _transfer_task(study: Study, chosen, seed: int, rank: int, ready: list[Task]) -> list[str]:
    """Add the seed's transfer matrix once its models have finished; returns its key if it
    waits on them, else nothing."""
    spec, key = study.plan.transfer, f"transfer/seed{seed}"
    sources = _labelled(study, spec.sources, chosen, seed)
    targets = _labelled(study, spec.targets, chosen, seed)
    if sources is None or targets is None:
        return [key]
    settings = transfer_settings(study, chosen, seed)
    out = transfer_dir(study, sources, targets, settings, seed)
    if (out / TRANSFER).is_file():
        return []
    again = [study.train_again(ready, [study.run_dir(v, chosen[v].chosen, seed)], chosen[v].chosen,
                               rank) for v in dict.fromkeys([*spec.sources, *spec.targets])]
    if any(again):  # an archive left some without model files
        return [key]
    task = {**study.eval_environment(), **settings, "sources": sources, "targets": targets,
            "out": str(out)}
    ready.append(Task(key, "transfer", task, (rank, PHASE["transfer"])))
    return []


# --------------------------------------------------------------------------------------------
# The report's part
# --------------------------------------------------------------------------------------------


def _numbers(model: dict[str, Any]) -> dict[str, float]:
    return {"clean": model["clean"], **{k: a["accuracy"] for k, a in model["attacks"].items()},
            "r_worst": model["r_worst"]}


def collect(study: Study) -> dict[str, Any]:
    """The tables, the transfer matrix and the figures' points, as plain data."""
    plan = study.plan
    chosen = {v: study.selection(v) for v in plan.variants}
    out: dict[str, Any] = {"tables": [], "transfer": None, "scenarios": {}, "alpha": {}}
    for table in plan.tables:
        rows, columns, suite = [], None, None
        for variant in table.variants:
            per_seed = {s: read_summary(table_dir(study, table, variant, chosen[variant].chosen, s))
                        for s in plan.seeds}
            first = per_seed[plan.seeds[0]]
            suite = suite or first["suite"]
            for model in first["models"]:
                values = {s: _numbers(per_seed[s]["models"][model]) for s in plan.seeds}
                columns = columns or list(values[plan.seeds[0]])
                cohort = len(plan.config(variant, plan.settings(variant)[0], plan.grid_seed).models) > 1
                label = f"{variant} {model}" if cohort else variant
                rows.append({"row": label, "variant": variant, "model": model, "seeds": values,
                             "mean_std": {c: mean_std([values[s][c] for s in plan.seeds]) for c in columns}})
        out["tables"].append({"name": table.name, "title": table.title, "checkpoint": table.checkpoint,
                              "suite": suite["name"], "per_attack": suite.get("per_attack"),
                              "suite_description": " ".join((suite.get("description") or "").split()),
                              "n": first["n_examples"], "columns": columns, "rows": rows})
    if plan.transfer is not None:
        out["transfer"] = _collect_transfer(study, chosen)
    attack = plan.figures.scenarios_attack

    def scenario_points(variant: str, rename=lambda model: model) -> dict[str, Any]:
        per_seed = [read_summary(study.eval_dir(variant, chosen[variant].chosen, s, "last"))["models"]
                    for s in plan.seeds]
        return {rename(model): {"clean": mean_std([m[model]["clean"] for m in per_seed]),
                                "robust": mean_std([_numbers(m[model])[attack] for m in per_seed])}
                for model in per_seed[0] if model != "ensemble"}

    for label, variant in plan.figures.scenarios.items():
        models = scenario_points(variant)
        teacher = plan.teachers.get(variant)
        if teacher is not None:  # an offline scenario's h1: the frozen teacher, seed by seed
            models = {**scenario_points(teacher, lambda _: f"h1 (frozen {teacher})"), **models}
        out["scenarios"][label] = {"variant": variant, "attack": attack, "models": models}
    for variant in plan.figures.alpha:
        out["alpha"][variant] = _alpha_curves(study, chosen[variant])
    return out


def _alpha_curves(study: Study, sel) -> dict[str, Any]:
    """Fig. 3's points: one curve against alpha per value of the grid's other keys (say each
    learning rate), the validation score the selection used and the clean accuracy of the
    same epochs, seed by the grid's seed; the chosen point is named."""
    plan, key = study.plan, "method.params.alpha"

    def curve_name(setting: dict[str, Any]) -> str:  # the other keys: "lr = 0.2"
        return ", ".join(f"{k.split('.')[-1]} = {v}" for k, v in setting.items() if k != key)

    curves: dict[str, dict[str, Any]] = {}
    for label, setting in sel.settings.items():
        fixed = {k: v for k, v in setting.items() if k != key}
        curve = curves.setdefault(curve_name(setting),
                                  {"fixed": fixed, "scores": {}, "clean": {}, "diverged": []})
        alpha = str(setting[key])
        if sel.scores[label] == float("-inf"):
            curve["diverged"].append(alpha)
            continue
        curve["scores"][alpha] = sel.scores[label]
        curve["clean"][alpha] = validation_score(study.run_dir(sel.variant, setting, plan.grid_seed),
                                                 plan.select, plan.select_on.get(sel.variant),
                                                 metric="clean")
    steps = plan.config(sel.variant, sel.chosen, plan.grid_seed).eval.pgd_steps
    return {"criterion": sel.criterion, "attack": f"PGD-{steps}",
            "chosen": {"alpha": str(sel.chosen[key]), "curve": curve_name(sel.chosen)},
            "curves": curves}


def _collect_transfer(study: Study, chosen) -> dict[str, Any]:
    spec = study.plan.transfer
    results = []
    for seed in study.plan.seeds:
        sources = _labelled(study, spec.sources, chosen, seed)
        targets = _labelled(study, spec.targets, chosen, seed)
        out = transfer_dir(study, sources, targets, transfer_settings(study, chosen, seed), seed)
        results.append(json.loads((out / TRANSFER).read_text()))
    first = results[0]
    matrix = {s: {t: mean_std([r["accuracy"][s][t] for r in results]) for t in first["targets"]}
              for s in first["sources"]}
    return {"sources": first["sources"], "targets": first["targets"], "n": first["n_examples"],
            "attack": first["attacks"][first["sources"][0]],
            "clean": {t: mean_std([r["clean"][t] for r in results]) for t in first["targets"]},
            "accuracy": matrix, "warnings": sorted({w for r in results for w in r["warnings"]})}


def markdown(data: dict[str, Any], name: str, figures: str = "") -> list[str]:
    """The sections' Markdown lines; figures are referenced as ``{figures}{name}-<figure>.png``."""
    lines: list[str] = []
    for table in data["tables"]:
        columns = table["columns"]
        header = ["model", *("R_worst" if c == "r_worst" else c for c in columns)]
        lines += [f"### {table['title']}", "",
                  # What the suite runs (e.g. which C&W), in its description as the evaluations
                  # recorded it: prose, outside an evaluation's identity.
                  f"Suite `{table['suite']}`"
                  + (f": {table['suite_description'].rstrip('.')}. On" if table.get("suite_description") else " on")
                  + f" {table['n']} test images, "
                  f"{'last-epoch' if table['checkpoint'] == 'last' else 'best-by-validation'} models "
                  f"of each variant's chosen setting; "
                  + ("each attack's column is the accuracy against it alone, "
                     if table["per_attack"] == "standalone" else "columns are cumulative, ")
                  + "R_worst the per-example worst case over all the table's attacks (across its "
                  "threat models, where it has several). "
                  "Accuracy in %, mean ± sample std over seeds.", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in table["rows"]:
            cells = [row["row"], *(percent_mean_std(row["mean_std"][c]) for c in columns)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    transfer = data["transfer"]
    if transfer is not None:
        attack = transfer["attack"]
        lines += ["### Transfer (black-box) attacks", "",
                  f"PGD-{attack.get('steps')} (step {attack.get('step_size')}, {attack.get('norm')} "
                  f"ε {attack.get('eps'):g}, no early stop) crafted on each source model (rows) and "
                  f"classified by each target (columns), last-epoch models of each variant's "
                  f"chosen setting, {transfer['n']} test images; where a "
                  "source is its own target the entry is white-box. Accuracy in %, mean ± sample "
                  "std over seeds.", "",
                  "| source \\ target | " + " | ".join(transfer["targets"]) + " |",
                  "|" + "---|" * (len(transfer["targets"]) + 1),
                  "| (clean) | " + " | ".join(percent_mean_std(transfer["clean"][t])
                                            for t in transfer["targets"]) + " |"]
        for source in transfer["sources"]:
            cells = [percent_mean_std(transfer["accuracy"][source][t])
                     + (" (white-box)" if source == t else "") for t in transfer["targets"]]
            lines.append(f"| {source} | " + " | ".join(cells) + " |")
        if not set(transfer["sources"]) & set(transfer["targets"]):
            verdict = ("none: no source is also a target, so there is no white-box entry to "
                       "compare the black-box ones with")
        elif transfer["warnings"]:
            verdict = "; ".join(transfer["warnings"])
        else:
            verdict = ("no black-box attack beat the white-box one on its target (no sign of "
                       "gradient masking)")
        lines += ["", f"Masking check: {verdict}.", ""]
    if data["scenarios"]:
        attack = next(iter(data["scenarios"].values()))["attack"]
        lines += ["### Knowledge-distillation scenarios", "",
                  f"Clean and robust ({'R_worst' if attack == 'r_worst' else attack}) test accuracy "
                  "of each scenario's models (last epoch, mean ± std over seeds; an offline "
                  "scenario's h1 is its frozen teacher, the teacher variant's model of the same "
                  "seed).", "",
                  "| scenario | variant | model | clean | robust |", "|---|---|---|---|---|"]
        for label, point in data["scenarios"].items():
            for model, acc in point["models"].items():
                lines.append(f"| {label} | {point['variant']} | {model} | {percent_mean_std(acc['clean'])} | "
                             f"{percent_mean_std(acc['robust'])} |")
        lines += ["", f"![scenarios]({figures}{name}-scenarios.png)", ""]
    for variant, alpha in data["alpha"].items():
        lines += _alpha_markdown(variant, alpha) + [f"![alpha]({figures}{name}-alpha-{variant}.png)", ""]
    return lines


def _alpha_markdown(variant: str, alpha: dict[str, Any]) -> list[str]:
    curves = alpha["curves"]
    alphas = sorted({a for c in curves.values() for a in (*c["scores"], *c["diverged"])}, key=float)
    lines = [f"### Validation accuracy against α ({variant})", "",
             f"Robust: {alpha['criterion']}; clean: the validation clean accuracy at the same "
             "epochs. (chosen) marks the grid point the selection picked. The learning rate is "
             "fixed along a curve, so MAT's effective step, about (1 − α) × lr while the peers "
             "are untrained, changes along it.",
             "", "| | " + " | ".join(f"α {a}" for a in alphas) + " |", "|---|" + "---|" * len(alphas)]
    for name, curve in curves.items():
        for metric, label in (("scores", f"validation {alpha['attack']}"), ("clean", "validation clean")):
            cells = []
            for a in alphas:
                if a in curve["diverged"]:
                    cells.append("diverged")
                    continue
                picked = a == alpha["chosen"]["alpha"] and name == alpha["chosen"]["curve"]
                cells.append(f"{100 * curve[metric][a]:.1f}" + (" (chosen)" if picked and metric == "scores" else "")
                             if a in curve[metric] else "—")
            lines.append(f"| {label}{f', {name}' if name else ''} | " + " | ".join(cells) + " |")
    return lines + [""]


def figure_names(data: dict[str, Any]) -> list[str]:
    return (["scenarios"] if data["scenarios"] else []) + [f"alpha-{v}" for v in data["alpha"]]


def plot(data: dict[str, Any], out: Path, name: str) -> list[Path]:
    """Write the figures as ``out/<name>-<figure>.png``."""
    paths = []
    if data["scenarios"]:
        points = {label: {model: (acc["clean"][0], acc["robust"][0]) for model, acc in p["models"].items()}
                  for label, p in data["scenarios"].items()}
        spread = {label: {model: (acc["clean"][1], acc["robust"][1]) for model, acc in p["models"].items()}
                  for label, p in data["scenarios"].items()}
        attack = next(iter(data["scenarios"].values()))["attack"]
        paths.append(paper_plots.plot_kd_scenarios(
            points, out / f"{name}-scenarios.png",
            robust_label=f"robust ({'R_worst' if attack == 'r_worst' else attack})", spread=spread))
    for variant, alpha in data["alpha"].items():
        robust: dict[str, dict[str, float]] = {}
        clean: dict[str, dict[str, float]] = {}
        for label, curve in alpha["curves"].items():
            line = label or "validation score"
            for a, v in curve["scores"].items():
                robust.setdefault(a, {})[line] = v
                clean.setdefault(a, {})[line] = curve["clean"][a]
            for a in curve["diverged"]:  # a gap in the line, marked with an x
                robust.setdefault(a, {})[line] = clean.setdefault(a, {})[line] = float("nan")
        paths.append(paper_plots.plot_alpha_curve(
            robust, out / f"{name}-alpha-{variant}.png", clean=clean,
            robust_label=f"validation {alpha['attack']} (%)",
            chosen=(alpha["chosen"]["alpha"], alpha["chosen"]["curve"] or "validation score")))
    return paths
