"""What a study's report states about how its numbers were made, beside the numbers: the
machines its tasks ran on (from the tasks' records and the evaluation files, never from the
machine that renders the report), and what each variant trains and how fast (parameters,
forward FLOPs per image, training images per second, CPU time per run)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from mutualat.compare.records import task_records
from mutualat.compare.study import Study
from mutualat.models import count_flops, load_model, read_model_meta
from mutualat.train.logger import read_metrics


def machines(study: Study) -> dict[str, Any]:
    """The machines that ran the study's tasks (its task records' ``machines``, the hardware
    each evaluation and transfer file states) and the torch versions they used; the torch
    threads per task where the records state them. Never the machine that renders."""
    found, threads, torch_versions = [], set(), set()

    def add(hardware: dict[str, Any]) -> None:
        entry = {k: hardware.get(k) for k in ("cpu", "cpu_count", "gpu") if hardware.get(k) is not None}
        if entry and entry not in found:
            found.append(entry)

    for record in task_records(study.out).values():
        for entry in (record, *record.get("earlier", [])):
            for machine in entry.get("machines", []):
                add(machine)
                if isinstance(machine.get("threads"), int):
                    threads.add(machine["threads"])
    for path in sorted([*(study.out / "evals").glob("**/summary.json"),
                        *(study.out / "tables").glob("**/summary.json"),
                        *(study.out / "transfer").glob("*/transfer.json")]):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        add(result.get("hardware", {}))
        if result.get("versions", {}).get("torch"):
            torch_versions.add(result["versions"]["torch"])
    found.sort(key=lambda m: json.dumps(m, sort_keys=True))
    return {"machines": found, "threads": sorted(threads), "torch": sorted(torch_versions)}


def model_costs(study: Study, selections: dict[str, Any]) -> dict[str, Any]:
    """Per variant, what its chosen runs train (each member's architecture, parameters and
    forward FLOPs per image, counted on the seed-``grid_seed`` model file), how fast they
    trained (images per second of training steps, the median over every epoch of every
    seed's run: validation excluded, a cohort's step trains each member on each image) and
    their CPU time per run (from the task records; None where a run has none)."""
    plan, records = study.plan, task_records(study.out)
    out = {}
    for variant in plan.variants:
        setting = selections[variant].chosen
        runs = [study.run_dir(variant, setting, s) for s in plan.seeds]
        members = []
        for role, file in study.model_files(runs[0]).items():
            spec = read_model_meta(file)["model"]
            model = load_model(file, device="cpu")
            shape = (spec["in_channels"], spec["input_size"], spec["input_size"])
            members.append({"role": role, "architecture": _architecture(spec),
                            "parameters": sum(p.numel() for p in model.parameters()),
                            "flops": count_flops(model, shape)})
        rates = [e["img_per_s"] for run in runs for e in read_metrics(run) if e.get("event") == "epoch"]
        cpu = [records[train_slug(study, run)]["cpu_s"] for run in runs
               if train_slug(study, run) in records]
        out[variant] = {"members": members, "img_per_s": statistics.median(rates) if rates else None,
                        "cpu_s_per_run": statistics.mean(cpu) if len(cpu) == len(runs) else None}
    return out


#: A saved model's constructor arguments that say nothing about its size.
_DATA_ARGUMENTS = ("name", "num_classes", "in_channels", "input_size", "mean", "std")


def _architecture(spec: dict[str, Any]) -> str:
    """``cnn32 (width 16)``: the model's name and the constructor arguments that shape it."""
    shaping = [f"{k} {v}" for k, v in spec.items() if k not in _DATA_ARGUMENTS]
    return spec["name"] + (f" ({', '.join(shaping)})" if shaping else "")


def train_slug(study: Study, run: Path) -> str:
    return "__".join(["train", *run.relative_to(study.out / "runs").parts])


def machines_text(data: dict[str, Any]) -> str:
    """``AMD EPYC (2 cores), 1 torch thread per task, torch 2.13.0+cpu``: the machines the
    study's tasks recorded (several joined by "; "), the thread counts where recorded."""
    machines = "; ".join(f"{m.get('cpu', '?')} ({m.get('cpu_count', '?')} cores"
                         + (f", {m['gpu']}" if m.get("gpu") else "") + ")"
                         for m in data["machines"]) or "machines not recorded"
    threads = data["threads"]
    per_task = (f", {'/'.join(map(str, threads))} torch thread{'s' if threads != [1] else ''} "
                "per task" if threads else "")
    versions = f", torch {' and '.join(data['torch'])}" if data["torch"] else ""
    return machines + per_task + versions


def model_lines(models: dict[str, Any]) -> list[str]:
    """What each variant trains and how fast: :func:`model_costs`."""
    lines = ["### Models and training speed", "",
             "Per variant, the trained members of its chosen runs: parameters and forward FLOPs "
             "per image of each (multiply-adds × 2, convolutions and matmuls); training speed "
             "in images per second of training steps, the median over every epoch of every seed's run "
             "(validation excluded; a cohort's step trains each member on each image, and other "
             "tasks may have shared the machine); CPU minutes per run, the mean over seeds.", "",
             "| variant | trained members | parameters (each) | MFLOPs / image (each) | "
             "training img/s | CPU (min) per run |", "|---|---|---|---|---|---|"]
    for variant, entry in models.items():
        members = entry["members"]
        shapes = sorted({m["architecture"] for m in members})
        what = (f"{len(members)} × " if len(members) > 1 else "") + " + ".join(shapes)
        each = members[:1] if len(shapes) == 1 else members  # identical members: one of them
        params = " + ".join(f"{m['parameters']:,}" for m in each)
        flops = " + ".join(f"{m['flops'] / 1e6:.1f}" for m in each)
        rate = f"{entry['img_per_s']:.0f}" if entry["img_per_s"] is not None else "—"
        cpu = f"{entry['cpu_s_per_run'] / 60:.1f}" if entry["cpu_s_per_run"] is not None else "—"
        lines.append(f"| {variant} | {what} | {params} | {flops} | {rate} | {cpu} |")
    return lines + [""]
