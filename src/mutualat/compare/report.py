"""The comparison's report: ``comparison.json`` (every number), ``comparison.md`` (made from
the JSON alone, so the table always equals it) and ``curves.png``
(:mod:`mutualat.compare.curves`).

Rows: a single-model variant gives one row; a cohort variant (MAT) gives its members (per
seed the mean over the members) and its ensemble (mean of the members' softmax), or, with
``select_on`` (MAT-MP's generalist, ACT's robust model), those members alone and no
ensemble; the control is the ensemble of independently trained single-model runs of the
control variant, as many as a cohort has members (the same compute as one cohort). Each row
reports, per checkpoint (last epoch, best by validation), the mean ± std over seeds of clean
accuracy, every attack of the suite, every threat type (per example the worst case over its
attacks), R_avg (their mean) and R_worst (per example the worst case over the whole suite),
and the paired difference to the baseline with its 95% t interval
(:mod:`mutualat.compare.stats`). Each cohort's ensemble, or its ``select_on`` members, is
also paired with the control, seed by seed (the same compute). The Markdown shows a column
per attack for a one-threat suite, a column per threat type and R_avg for several, then each
type's PGD alone beside the type and what the type's later attacks added
(:mod:`mutualat.compare.per_type`). A table of
robust overfitting follows: per variant, each seed's best and last validation robust
accuracy and the fall between them (:func:`mutualat.compare.curves.overfitting`). Then what
each variant trains and how fast (parameters, FLOPs, img/s, CPU per run), the runs, and the
machines the tasks recorded running on; a plan with ``paper_scale`` also says what it cut
from the paper's setting and names its full-scale twin.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from mutualat.compare import masking, provenance, sections
from mutualat.compare.curves import overfitting, plot_curves
from mutualat.compare.per_type import after_pgd_lines, pgd_alone_lines
from mutualat.compare.records import read_summary, task_records
from mutualat.compare.selection import choice_notes, score_line
from mutualat.compare.stats import INTERVAL, mean_std, paired_interval, percent_mean_std
from mutualat.compare.study import CONTROL, Study
from mutualat.report.documents import write_section
from mutualat.files import atomic_write_bytes

SUMMARY_METRICS = ("clean", "r_avg", "r_worst")
PAIRED_METRICS = ("clean", "r_avg", "r_worst")


def collect(study: Study) -> dict[str, Any]:
    """Everything the report states, from the study's folder."""
    plan = study.plan
    selections = {v: study.selection(v) for v in plan.variants}
    records = task_records(study.out)
    rows = []
    for variant in plan.variants:
        for checkpoint in plan.checkpoints:
            rows += _variant_rows(study, variant, checkpoint)
    if plan.control is not None:
        chosen = selections[plan.control.variant].chosen
        for checkpoint in study.checkpoints_of(CONTROL):
            rows.append(_row(f"{plan.control.variant} ×{plan.control.members} ensemble (control)",
                             CONTROL, "control", checkpoint,
                             {s: read_summary(study.eval_dir(CONTROL, chosen, s, checkpoint))
                              ["models"]["ensemble"] for s in plan.seeds}))
    for row in rows:
        base = next(r for r in rows if r["variant"] == plan.baseline
                    and r["checkpoint"] == row["checkpoint"] and r["kind"] in ("single", "members"))
        row["baseline"] = row is base
        row["paired"] = _paired(row, base)
        control = next((r for r in rows if r["kind"] == "control"
                        and r["checkpoint"] == row["checkpoint"]), None)
        # What a cohort yields, against what the same compute yields without learning
        # together: its ensemble, or the members a variant is judged by (MAT-MP's generalist).
        if control is not None and (row["kind"] == "ensemble" or (
                row["kind"] == "members" and row["variant"] in plan.select_on)):
            row["paired_control"] = _paired(row, control)
    baseline_choice = selections[plan.baseline].chosen
    first = read_summary(study.eval_dir(plan.baseline, baseline_choice, plan.grid_seed, plan.checkpoints[0]))
    return {
        "plan": {"name": plan.name, "description": plan.description, "seeds": plan.seeds,
                 "select": plan.select, "checkpoints": plan.checkpoints, "baseline": plan.baseline,
                 "control": (vars(plan.control) if plan.control else None),
                 "suite": provenance.suite_record(plan, first["suite"]), "eval": vars(plan.eval),
                 "variants": plan.variants,
                 "grids": {v: study.grid(v) for v in plan.variants},  # with what extend_grid added
                 "extend_grid": plan.extend_grid,
                 "paper_scale": (None if plan.paper_scale is None else
                                 {"plan": plan.paper_scale.plan,
                                  "smaller": list(plan.paper_scale.smaller),
                                  "settings": provenance.plan_settings(plan),
                                  "twin": provenance.plan_settings(plan.twin)})},
        "attacks": [a["id"] for a in first["suite"]["attacks"]],
        "test_images": first["n_examples"],
        "interval": INTERVAL,
        "selection": {v: {"chosen": s.chosen, "label": s.label,
                          "scores": {k: (None if v == float("-inf") else v)  # None: diverged
                                     for k, v in s.scores.items()},
                          "criterion": s.criterion, "at_edge": s.at_edge, "note": s.note,
                          "extended": s.extended}
                      for v, s in selections.items()},
        "rows": rows,
        "runs": _runs(study, selections, records),
        "overfitting": overfitting(study),
        "warnings": masking.collect(study, selections),
        "extras": sections.collect(study),
        "models": provenance.model_costs(study, selections, records),
        **provenance.machines(study, records),
    }


def _paired(row: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Per seed ``row - other`` for each paired metric, with the interval of its mean."""
    paired = {}
    for metric in PAIRED_METRICS:
        diffs = [row["seeds"][s][metric] - other["seeds"][s][metric] for s in row["seeds"]]
        p = paired_interval(diffs)
        paired[metric] = {"differences": diffs, "mean": p.mean, "low": p.low, "high": p.high,
                          "excludes_zero": p.excludes_zero}
    return paired


def _variant_rows(study: Study, variant: str, checkpoint: str) -> list[dict[str, Any]]:
    seeds = study.plan.seeds
    chosen = study.selection(variant).chosen
    summaries = {s: read_summary(study.eval_dir(variant, chosen, s, checkpoint)) for s in seeds}
    # The members reported are those the plan evaluates (Study.evaluated refused any
    # evaluation lacking one), less a scenario's other members under select_on; an
    # evaluation may hold more (one made before select_on was set).
    job = study.eval_job(variant, chosen, seeds[0], [study.run_dir(variant, chosen, seeds[0])],
                         checkpoint, True)
    roles = study.plan.select_on.get(variant)
    members = [m for m in job["evaluated"] if roles is None or m in roles]
    cohort = len(study.plan.config(variant, study.plan.settings(variant)[0], seeds[0]).models) > 1
    if not cohort:
        return [_row(variant, variant, "single", checkpoint,
                     {s: summaries[s]["models"][members[0]] for s in seeds})]
    per_seed = {s: _mean_of([summaries[s]["models"][m] for m in members]) for s in seeds}
    label = "members" if len(members) > 1 else f"member {members[0]}"
    rows = [_row(f"{variant} ({label})", variant, "members", checkpoint, per_seed)]
    if job["ensemble"]:
        rows.append(_row(f"{variant} (ensemble)", variant, "ensemble", checkpoint,
                         {s: summaries[s]["models"]["ensemble"] for s in seeds}))
    return rows


def _numbers(model: dict[str, Any]) -> dict[str, Any]:
    return {"clean": model["clean"], "r_avg": model["r_avg"], "r_worst": model["r_worst"],
            "threats": dict(model["threats"]),
            "attacks": {k: a["accuracy"] for k, a in model["attacks"].items()}}


def _mean_of(models: list[dict[str, Any]]) -> dict[str, Any]:
    numbers = [_numbers(m) for m in models]
    return {**{metric: statistics.mean(n[metric] for n in numbers) for metric in SUMMARY_METRICS},
            **{group: {k: statistics.mean(n[group][k] for n in numbers) for k in numbers[0][group]}
               for group in ("threats", "attacks")},
            "members": numbers}


def _row(name: str, variant: str, kind: str, checkpoint: str,
         per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    seeds = {s: (v if "members" in v else _numbers(v)) for s, v in per_seed.items()}
    values = list(seeds.values())
    summary = {}
    for metric in SUMMARY_METRICS:
        summary[metric] = mean_std([v[metric] for v in values])
    for threat in values[0]["threats"]:  # a threat type's name never equals an attack id
        summary[f"threat:{threat}"] = mean_std([v["threats"][threat] for v in values])
    for attack in values[0]["attacks"]:
        summary[attack] = mean_std([v["attacks"][attack] for v in values])
    return {"row": name, "variant": variant, "kind": kind, "checkpoint": checkpoint,
            "seeds": seeds, "mean_std": summary}


def _runs(study: Study, selections: dict[str, Any],
          records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every training run of the study with what it cost (wall and CPU seconds of the task
    processes that ran it, summed over invocations; None for a run this study reused from
    elsewhere without a record), and whether the plan still asks for it (a run of a grid
    point, seed, variant or control member the plan has since dropped stays in the folder,
    and in its cost)."""
    out = []
    wanted = provenance.planned_runs(study, selections)
    for run in sorted((study.out / "runs").glob("*/*/seed*")):
        if not (study.finished(run) or study.diverged(run)):
            continue
        record = records.get(provenance.train_slug(study, run), {})
        variant, label = run.parts[-3], run.parts[-2]
        chosen = selections.get(variant)
        out.append({"variant": variant, "setting": label, "run": run.name,
                    "chosen": bool(chosen and chosen.label == label and run in wanted),
                    "in_plan": run in wanted,
                    "diverged": study.diverged(run),
                    "wall_s": record.get("wall_s"), "cpu_s": record.get("cpu_s")})
    return out


# --------------------------------------------------------------------------------------------
# Markdown, from the JSON only
# --------------------------------------------------------------------------------------------


def _overfitting_lines(data: dict[str, Any]) -> list[str]:
    """The robust-overfitting table: per variant, mean ± std over seeds."""
    if not data:
        return []
    first = next(iter(data.values()))
    lines = ["### Robust overfitting, on the validation split", "",
             f"Each seed's chosen run: validation PGD-{first['val_steps']} accuracy (a cohort's: "
             "the mean over its members, or over its select_on members) at its best epoch and at "
             "the last, the fall between them (robust overfitting), and at the last epoch the "
             "validation clean and the training adversarial accuracy (mean over the epoch's "
             "batches). Mean ± std over seeds. The best is a maximum over epochs of a score "
             "measured on "
             + (f"{first['val_images']} images" if first["val_images"] else "the validation split")
             + ", so noise alone makes it exceed the last a little.", "",
             "| variant | best epoch (per seed) | best | last | best − last | last: clean | "
             "last: training adversarial |", "|---|---|---|---|---|---|---|"]
    for variant, entry in data.items():
        seeds = list(entry["seeds"].values())
        cells = [variant, ", ".join(f"{s['best_epoch']}/{s['epochs']}" for s in seeds)]
        cells += [percent_mean_std(mean_std([s[k] for s in seeds]))
                  for k in ("best", "last", "drop", "last_clean", "last_train_adv")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _diff(paired: dict[str, Any], baseline: bool) -> str:
    if baseline:
        return "—"
    if paired["low"] is None:
        return f"{100 * paired['mean']:+.2f}"
    mark = " *" if paired["excludes_zero"] else ""
    return f"{100 * paired['mean']:+.2f} [{100 * paired['low']:+.2f}, {100 * paired['high']:+.2f}]{mark}"


def markdown(data: dict[str, Any], figures: str = "") -> str:
    """The report from its JSON; ``figures`` prefixes the file names of the plan's figures."""
    plan = data["plan"]
    attacks = data["attacks"]
    threats = list(plan["suite"]["threats"])
    # Several threat types (MAT-MP's Table 5): a column per type, R_avg and R_worst, as the
    # paper's table; one type: a column per attack. comparison.json holds both.
    multi = len(threats) > 1
    columns = ([f"threat:{t}" for t in threats] + ["r_avg"]) if multi else attacks
    titles = ([f"{t} attacks" for t in threats] + ["R_avg"]) if multi else attacks
    paired = PAIRED_METRICS if multi else tuple(m for m in PAIRED_METRICS if m != "r_avg")
    names = {"clean": "clean", "r_avg": "R_avg", "r_worst": "R_worst"}
    lines = [f"## Comparison `{plan['name']}`", ""]
    if plan["description"]:
        lines += [plan["description"].strip(), ""]
    lines += [f"Seeds {', '.join(map(str, plan['seeds']))}; {data['test_images']} test images "
              f"(class-balanced, the same for every model); suite `{plan['suite']['name']}` "
              f"({', '.join(attacks)}), R_worst = per example the worst case over the suite"
              + ("; a threat type's column is per example the worst case over that type's "
                 "attacks, R_avg the mean of those columns" if multi else
                 "; the suite is cumulative, so each attack's column is the accuracy against it "
                 "and every attack before it" if plan["suite"].get("per_attack") == "cumulative" else "")
              + f". Accuracy in %, mean ± sample std over seeds. Δ = paired difference to "
              f"`{plan['baseline']}` with its {data['interval']}; * = the interval excludes 0.", ""]
    if plan["suite"].get("description"):
        lines += [f"Suite `{plan['suite']['name']}`: {plan['suite']['description'].strip()}", ""]
    lines += _paper_scale_lines(plan.get("paper_scale"))
    for checkpoint in plan["checkpoints"]:
        title = "last epoch" if checkpoint == "last" else "best epoch by validation robust accuracy"
        lines += [f"### Models of the {title}", ""]
        header = ["model", "clean", *titles, "R_worst", *(f"Δ {names[m]}" for m in paired)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in data["rows"]:
            if row["checkpoint"] != checkpoint:
                continue
            ms = row["mean_std"]
            cells = [row["row"], *(percent_mean_std(ms[m]) for m in ("clean", *columns, "r_worst")),
                     *(_diff(row["paired"][m], row["baseline"]) for m in paired)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        against = [r for r in data["rows"] if r["checkpoint"] == checkpoint and "paired_control" in r]
        if against:
            header = ["model", *(f"Δ {names[m]} vs control" for m in paired)]
            lines += ["Against the compute-matched control (paired by seed): each cohort's ensemble, "
                      "and the members a variant is judged by (its select_on):", "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for row in against:
                lines.append(f"| {row['row']} | " + " | ".join(
                    _diff(row["paired_control"][m], False) for m in paired) + " |")
            lines.append("")
        lines += pgd_alone_lines(data, checkpoint) + after_pgd_lines(data, checkpoint)
    lines += masking.lines(data.get("warnings"))
    lines += _overfitting_lines(data["overfitting"])
    lines += sections.markdown(data["extras"], plan["name"], figures)
    lines += ["### Hyperparameters chosen on the validation split", ""]
    lines += ["| variant | grid point: validation score (%) | chosen |", "|---|---|---|"]
    for variant, sel in data["selection"].items():
        scores = ", ".join(f"{label}: {'diverged' if v is None else f'{100 * v:.1f}'}"
                           for label, v in sel["scores"].items())
        notes = choice_notes(sel["at_edge"], sel.get("note"), sel.get("extended", ()))
        lines.append(f"| {variant} | {scores} | {sel['label']}{f' ({notes})' if notes else ''} |")
    lines += ["", score_line({v: sel["criterion"] for v, sel in data["selection"].items()}), ""]
    lines += provenance.model_lines(data["models"])
    lines += ["### Runs", "", "| variant | setting | run | chosen | wall (min) | CPU (min) |",
              "|---|---|---|---|---|---|"]
    for run in data["runs"]:
        wall = f"{run['wall_s'] / 60:.1f}" if run["wall_s"] is not None else "—"
        cpu = f"{run['cpu_s'] / 60:.1f}" if run["cpu_s"] is not None else "—"
        chosen = "; ".join(note for note, flag in (
            ("yes", run["chosen"]), ("diverged", run.get("diverged")),
            ("not in the plan", not run.get("in_plan", True))) if flag)
        lines.append(f"| {run['variant']} | {run['setting']} | {run['run']} | {chosen} | {wall} | {cpu} |")
    total = sum(r["cpu_s"] or 0 for r in data["runs"])
    dropped = sum(not r.get("in_plan", True) for r in data["runs"])
    lines += ["", (f"{dropped} run{'s' if dropped != 1 else ''} the plan no longer asks for (a "
                   "grid point, seed, variant or control member it has dropped) "
                   f"{'stay' if dropped != 1 else 'stays'} in the study's folder, listed and "
                   "counted here, never chosen. " if dropped else "")
              + f"Training CPU time of these runs: {total / 3600:.1f} h. Ran on: "
              f"{provenance.machines_text(data)}.", ""]
    return "\n".join(lines)


def _paper_scale_lines(scale: dict[str, Any] | None) -> list[str]:
    """What a plan below the paper's scale cut and why (the plan's words), then its settings
    beside its full-scale twin's (read from both plans)."""
    if scale is None:
        return []
    return (["### Against the paper's setting", "",
             f"This comparison runs below the paper's scale. `{scale['plan']}` is its full-scale "
             "twin, a plan for a GPU. What differs, and why:", ""]
            + [f"- {item}" for item in scale["smaller"]] + [""]
            + provenance.settings_lines(scale["settings"], scale["twin"], scale["plan"]))


def cost(study: Study) -> dict[str, Any]:
    """What the study cost, from its task records: CPU and wall seconds of the training and
    evaluation tasks (a task that finished and ran again counts both times), and the span
    from the first start to the last end (pauses between sittings included)."""
    records = []
    for slug, record in task_records(study.out).items():
        kind = "train" if slug.startswith("train__") else "eval"
        for again, entry in enumerate((record, *record.get("earlier", []))):  # each time it ran
            records.append({**entry, "kind": kind, "again": again > 0})
    total = {kind: {"cpu_s": sum(r["cpu_s"] for r in records if r["kind"] == kind),
                    "wall_s": sum(r["wall_s"] for r in records if r["kind"] == kind),
                    "tasks": sum(r["kind"] == kind and not r["again"] for r in records),
                    "again": sum(r["kind"] == kind and r["again"] for r in records)}
             for kind in ("train", "eval")}
    starts = [r["started"] for r in records if "started" in r]
    ends = [r["ended"] for r in records if "ended" in r]
    total["span_s"] = (max(ends) - min(starts)) if starts and ends else None
    return total


def document_section(study: Study, command: str) -> str:
    """The comparison as a section of docs/RESULTS.md (between its markers), with the
    command that regenerates it, what it cost and the hardware; the curves are referenced as
    ``figures/<plan>-curves.png`` beside the document."""
    data = json.loads((study.out / "comparison.json").read_text())
    spent = cost(study)
    hours = {k: spent[k]["cpu_s"] / 3600 for k in ("train", "eval")}
    span = f"; {spent['span_s'] / 3600:.1f} h from first start to last end" if spent["span_s"] else ""
    again = {k: f" (and {spent[k]['again']} earlier run{'s' * (spent[k]['again'] > 1)} of tasks "
                f"that ran again)" if spent[k]["again"] else "" for k in ("train", "eval")}
    name = study.plan.name
    head = [
        f"<!-- compare:{name}:begin -->",
        markdown(data, "figures/").replace(f"## Comparison `{name}`", f"## The comparison `{name}`", 1),
        f"![Per-epoch validation and training accuracy](figures/{name}-curves.png)", "",
        f"Regenerate with `{command}` (its first argument is the plan; finished runs and "
        f"evaluations in the output folder are reused). Cost: {hours['train']:.1f} CPU-hours "
        f"of training in {spent['train']['tasks']} runs{again['train']}, {hours['eval']:.1f} "
        f"CPU-hours of evaluation in {spent['eval']['tasks']} tasks{again['eval']}{span}; ran on "
        f"{provenance.machines_text(data)}.",
        f"<!-- compare:{name}:end -->",
    ]
    return "\n".join(head)


def write_document(study: Study, document: Path, command: str) -> None:
    """Write :func:`document_section` into ``document`` and the curves beside it."""
    name = study.plan.name
    folder = Path(document).parent / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(study.out / "curves.png", folder / f"{name}-curves.png")
    extras = json.loads((study.out / "comparison.json").read_text())["extras"]
    for figure in sections.figure_names(extras):
        shutil.copyfile(study.out / f"{name}-{figure}.png", folder / f"{name}-{figure}.png")
    write_section(Path(document), f"<!-- compare:{name}:begin -->", f"<!-- compare:{name}:end -->",
                  document_section(study, command))


def write_report(study: Study) -> Path:
    with study.snapshot():  # the study's files do not change while its report is written
        data = collect(study)
        atomic_write_bytes(study.out / "comparison.json", json.dumps(data, indent=2).encode())
        plot_curves(study, study.out / "curves.png")
    sections.plot(data["extras"], study.out, study.plan.name)
    path = study.out / "comparison.md"
    atomic_write_bytes(path, (markdown(data) + "\n![curves](curves.png)\n").encode())
    return path
