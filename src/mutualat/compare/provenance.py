"""What a study's report states about how its numbers were made, beside the numbers: the
machines its tasks ran on (from the tasks' records and the evaluation files, never from the
machine that renders the report), and what each variant trains and how fast (parameters,
forward FLOPs per image, training images per second, CPU time per run), and a plan's settings
beside those of its paper-scale twin."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from mutualat.compare.plan import Plan
from mutualat.compare.records import model_meta
from mutualat.compare.study import Study
from mutualat.compare.tasks import judged_alone
from mutualat.data import default_augmentation
from mutualat.evaluation import load_suite
from mutualat.methods import build_method
from mutualat.models import count_flops, create_model
from mutualat.report import documents
from mutualat.train.logger import read_metrics
from mutualat.train.optim import lr_and_weight_decay
from mutualat.train.precision import Precision, candidates, device_rule


def machines(study: Study, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The machines that ran the study's tasks, gathered by
    :func:`mutualat.report.documents.gather_machines` from its task ``records``' ``machines``
    and the machines each evaluation and transfer file states; and whether any training
    task's record names its machine (records written before they did name none). Never the
    machine that renders."""
    named, trained_recorded = [], False
    for slug, record in records.items():
        for entry in (record, *record.get("earlier", [])):
            named += entry.get("machines", [])
            trained_recorded |= slug.startswith("train__") and bool(entry.get("machines"))
    for path in sorted([*(study.out / "evals").glob("**/summary.json"),
                        *(study.out / "tables").glob("**/summary.json"),
                        *(study.out / "transfer").glob("*/transfer.json")]):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        # The machines that computed its attacks; a file written before they were recorded,
        # or a transfer matrix, names the one that wrote it.
        computed = [m for m in result.get("computed_on") or [] if m.get("cpu")]
        named += computed or [{**result.get("hardware", {}),
                               "torch": result.get("versions", {}).get("torch")}]
    return {**documents.gather_machines(named), "training_machines_recorded": trained_recorded}


def model_costs(study: Study, selections: dict[str, Any],
                records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per variant, what its chosen runs train (each member's architecture, parameters and
    forward FLOPs per image, counted on the seed-``grid_seed`` model's architecture), how fast they
    trained (images per second of training steps, the median over every epoch of every
    seed's run: validation excluded, a cohort's step trains each member on each image) and
    their CPU time per run (from the task records; None unless every seed's run has one).
    A variant with a teacher also names it: its frozen model runs in every step too."""
    plan, out = study.plan, {}
    for variant in plan.variants:
        setting = selections[variant].chosen
        runs = [study.run_dir(variant, setting, s) for s in plan.seeds]
        members = []
        for role, file in study.model_files(runs[0]).items():
            spec = model_meta(file)["model"]  # an archived run's too (it keeps no weights)
            model = create_model(**spec).eval()  # its size and FLOPs: weights do not matter
            shape = (spec["in_channels"], spec["input_size"], spec["input_size"])
            members.append({"role": role, "architecture": _architecture(spec),
                            "parameters": sum(p.numel() for p in model.parameters()),
                            "flops": count_flops(model, shape)})
        rates = [e["img_per_s"] for run in runs for e in read_metrics(run) if e.get("event") == "epoch"]
        cpu = [records[train_slug(study, run)]["cpu_s"] for run in runs
               if train_slug(study, run) in records]
        out[variant] = {"members": members, "frozen": plan.teachers.get(variant),
                        "img_per_s": statistics.median(rates) if rates else None,
                        "cpu_s_per_run": statistics.mean(cpu) if len(cpu) == len(runs) else None}
    return out


#: A saved model's constructor arguments that say nothing about its size.
_DATA_ARGUMENTS = ("name", "num_classes", "in_channels", "input_size", "mean", "std")


def _architecture(spec: dict[str, Any]) -> str:
    """``cnn32 (width 16)``: the model's name and the constructor arguments that shape it."""
    shaping = [f"{k} {v}" for k, v in spec.items() if k not in _DATA_ARGUMENTS]
    return spec["name"] + (f" ({', '.join(shaping)})" if shaping else "")


def planned_runs(study: Study, selections: dict[str, Any]) -> set[Path]:
    """The run folders the plan asks for now: every grid point at the grid's seed, the
    chosen point at every seed, and the control's extra members (a run of a grid point,
    seed or control member the plan has since dropped is not among them)."""
    plan = study.plan
    wanted = {study.run_dir(v, s, plan.grid_seed) for v in plan.variants for s in study.settings(v)}
    for variant, selection in selections.items():
        if selection is not None:
            wanted |= {study.run_dir(variant, selection.chosen, seed) for seed in plan.seeds}
    control = selections.get(plan.control.variant) if plan.control is not None else None
    if control is not None:
        wanted |= {study.run_dir(plan.control.variant, control.chosen, seed, init)
                   for seed in plan.seeds for init in study.control_inits(seed)}
    return wanted


def train_slug(study: Study, run: Path) -> str:
    return "__".join(["train", *run.relative_to(study.out / "runs").parts])


def suite_record(plan: Plan, recorded: dict[str, Any]) -> dict[str, Any]:
    """The suite as an evaluation recorded it (``summary.json``), with the packaged suite's
    current description where it is the same suite but for that prose: a description
    corrected after the evaluations ran is what the report says (it is not part of an
    evaluation's identity, :func:`mutualat.evaluation.records.evaluation_identity`)."""
    current = load_suite(plan.suite).to_dict()
    same = all(current.get(k) == recorded.get(k) for k in {*current, *recorded} - {"description"})
    return {**recorded, "description": current.get("description")} if same else recorded


def machines_text(data: dict[str, Any]) -> str:
    """``AMD EPYC (2 cores), 1 torch thread per task, torch 2.13.0+cpu``
    (:func:`mutualat.report.documents.machines_text`), and whether the training's machines
    are known only from the evaluation files."""
    unrecorded = ("" if data["training_machines_recorded"] else
                  " (as its evaluation files state; its training tasks' records name no machine)")
    return documents.machines_text(data) + unrecorded


def model_lines(models: dict[str, Any]) -> list[str]:
    """What each variant trains and how fast: :func:`model_costs`."""
    lines = ["### Models and training speed", "",
             "Per variant, the trained members of its chosen runs: parameters and forward FLOPs "
             "per image of one member of each architecture (multiply-adds × 2, convolutions and "
             "matmuls); training speed in images per second of training steps, the median over "
             "every epoch of every seed's run (validation excluded; a cohort's step trains each "
             "member on each image, and other tasks may have shared the machine, so it measures "
             "the load as well as the model); CPU minutes per run, the mean over seeds.", "",
             "| variant | trained members | parameters (each) | MFLOPs / image (each) | "
             "training img/s | CPU (min) per run |", "|---|---|---|---|---|---|"]
    for variant, entry in models.items():
        kinds: dict[str, list[dict[str, Any]]] = {}  # architecture -> its members, in role order
        for member in entry["members"]:
            kinds.setdefault(member["architecture"], []).append(member)
        what = " + ".join((f"{len(group)} × " if len(group) > 1 else "") + arch
                          for arch, group in kinds.items())
        if entry.get("frozen"):
            what += f" (and the frozen {entry['frozen']} model)"
        params = " + ".join(f"{group[0]['parameters']:,}" for group in kinds.values())
        flops = " + ".join(f"{group[0]['flops'] / 1e6:.1f}" for group in kinds.values())
        rate = f"{entry['img_per_s']:.0f}" if entry["img_per_s"] is not None else "—"
        cpu = f"{entry['cpu_s_per_run'] / 60:.1f}" if entry["cpu_s_per_run"] is not None else "—"
        lines.append(f"| {variant} | {what} | {params} | {flops} | {rate} | {cpu} |")
    return lines + [""]


def plan_settings(plan: Plan) -> dict[str, str]:
    """What a plan trains and measures, one line per setting, read from its baseline's run
    config (the grid's first point, the first seed) and the plan itself (the weight decay: of
    every variant, :func:`_weight_decays`): the rows of the side-by-side table of a plan and
    its paper-scale twin (:func:`settings_lines`)."""
    cfg = plan.config(plan.baseline, plan.settings(plan.baseline)[0], plan.grid_seed)
    data, optim = cfg.data, cfg.optim
    model = cfg.models[0]
    threats = [t for t in build_method(copy.deepcopy(cfg)).threats() if t.steps > 0]
    held_out = f"{data.val_fraction:.0%} of the training split held out"
    return {
        "data": data.name + (f" ({Path(data.path).name})" if data.path else ""),
        "training images": f"{data.train_subset:,}" if data.train_subset else f"all but the {held_out}",
        "augmentation": (data.augment
                         or f"{default_augmentation(data.name)} (the dataset's default)"),
        "model": _architecture({"name": model.name, **model.kwargs}),
        "epochs": f"{optim.epochs}, lr × {optim.gamma:g} at "
                  + ", ".join(f"{100 * m:.3g}" for m in optim.milestones) + " % of training",
        "batch size; weight decay": f"{data.batch_size}; {_weight_decays(plan)}",
        "training arithmetic": _arithmetic(cfg.amp, cfg.channels_last, cfg.deterministic),
        "training attack": "; ".join(
            f"{t.norm} ε {_fraction(t.eps)}, PGD-{t.steps}, step {_fraction(t.resolved_step_size())}"
            for t in threats),
        "variants": ", ".join(plan.variants),
        "seeds": f"{len(plan.seeds)} ({', '.join(map(str, plan.seeds))})",
        "selection": f"{f'{data.val_subset:,}' if data.val_subset else 'all'} validation images "
                     f"({held_out}), PGD-{cfg.eval.pgd_steps}, the {plan.select} epoch's"
                     + "".join(f"; within one standard error of the best, the {v} {k}"
                               for k, v in plan.within_one_se.items())
                     + "".join(f"; a grid whose best, not tied, is at its edge gains up to {n} "
                               f"{k} value{'s' if n != 1 else ''}"
                               for k, n in plan.extend_grid.items()),
        "test images; suite": f"{plan.eval.n:,}; {load_suite(plan.suite).name}",
        "checkpoints evaluated": ", ".join(plan.checkpoints),
        "cohort members evaluated alone": _evaluated_members(plan),
        "ensembles at": ", ".join(plan.eval.ensembles) or "none",
        "control": (f"{plan.control.variant} ×{plan.control.members}" if plan.control else "none"),
        "tables; transfer": "; ".join([
            ", ".join(f"{t.name} ({t.n:,} images, {load_suite(t.suite).name})" for t in plan.tables)
            or "none",
            f"{plan.transfer.n:,} images, PGD-{plan.transfer.steps}" if plan.transfer else "none"]),
    }


def _evaluated_members(plan: Plan) -> str:
    """``all; mat-mp-max, mat-mp-avg: generalist``: the plan's eval.members, then the variants
    judged by some members alone (select_on), whose other members are not evaluated, unless a
    figure shows every member (:meth:`mutualat.compare.study.Study.eval_job`)."""
    alone: dict[tuple[str, ...], list[str]] = {}
    for variant in plan.select_on:
        roles = judged_alone(plan, variant)
        if roles:
            alone.setdefault(tuple(roles), []).append(variant)
    return "; ".join(["h1 only" if plan.eval.members == "first" else "all"]
                     + [f"{', '.join(variants)}: {', '.join(roles)}" for roles, variants in alone.items()])


def _weight_decays(plan: Plan) -> str:
    """``0.0005 (ard-wd's student: 0.002)``: the baseline's weight decay, then the trained
    members whose decay a variant sets apart from it. A variant whose grid searches a decay
    (``weight_decay``, ``models.N.weight_decay``, ...) shows it in the hyperparameter table
    instead; a frozen member (a teacher) takes no step."""
    decays = {variant: _trained_decays(plan, variant) for variant in plan.variants}
    baseline = decays[plan.baseline]
    if baseline is None:
        return "searched (the hyperparameter table)"
    weight_decay = next(iter(baseline.values()))
    others = []
    for variant, by_role in decays.items():
        apart: dict[float, list[str]] = {}
        for role, decay in (by_role or {}).items():
            if decay != weight_decay:
                apart.setdefault(decay, []).append(role)
        others += [f"{variant}'s {', '.join(roles)}: {decay:g}" for decay, roles in apart.items()]
    return f"{weight_decay:g}" + (f" ({'; '.join(others)})" if others else "")


def _trained_decays(plan: Plan, variant: str) -> dict[str, float] | None:
    """The weight decay of each trained member of ``variant``, by role; None where its grid
    searches one (the decays differ between grid points)."""
    seen = []
    for setting in plan.settings(variant):
        cfg = plan.config(variant, setting, plan.grid_seed)
        roles = build_method(copy.deepcopy(cfg)).member_roles(len(cfg.models))
        seen.append({role: lr_and_weight_decay(model)[1]
                     for role, model in zip(roles, cfg.models) if not model.frozen})
    return seen[0] if all(decays == seen[0] for decays in seen) else None


def _arithmetic(amp: str, channels_last: str, deterministic: bool) -> str:
    """``bf16 autocast, channels_last; evaluation in fp32``: how a run's training step
    computes, as its config pins it, or where it says "auto" by the trainer's own rules
    (:func:`mutualat.train.precision.device_rule` on CUDA and for a deterministic run on a
    CPU, else the CPU's timed trial)."""
    options = candidates(amp, channels_last)
    if len(options) == 1:
        return f"{_words(options[0])}; evaluation in fp32"
    cuda = _words(device_rule(amp, channels_last, torch.device("cuda")))
    if deterministic:
        cpu = f"{_words(device_rule(amp, channels_last, torch.device('cpu')))} (no trial)"
    else:
        pinned = _words(options[0]).split(", ")  # the words of the parts the config pins
        pinned = [word for word, value in zip(pinned, (amp, channels_last)) if value != "auto"]
        left = [name for name, value in (("precision", amp), ("layout", channels_last))
                if value == "auto"]
        cpu = ", ".join(pinned + [f"the {' and '.join(left)} by a timed trial"])
        if amp == "auto":
            cpu += " (bf16 only where the processor has bf16 instructions)"
    return f"on CUDA {cuda}, on a CPU {cpu}; evaluation in fp32"


def _words(precision: Precision) -> str:
    return (f"{'bf16 autocast' if precision.amp else 'fp32'}, "
            f"{'channels_last' if precision.channels_last else 'contiguous'}")


def _fraction(value: float) -> str:
    """8/255 for 0.0313725..., else the number: how the field writes l-inf radii and steps."""
    scaled = value * 255
    if 0 < value < 1 and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{value:.4g}"


def settings_lines(ours: dict[str, str], twin: dict[str, str], twin_path: str) -> list[str]:
    """A plan's settings beside its paper-scale twin's (:func:`plan_settings` of each)."""
    lines = [f"| setting | this plan | paper-scale twin `{twin_path}` |", "|---|---|---|"]
    for key in ours:
        lines.append(f"| {key} | {ours[key]} | {twin.get(key, '—')} |")
    return lines + [""]
