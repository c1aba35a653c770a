"""One task of a comparison, in its own process: ``python -m mutualat.compare.worker TASK.json``.

A ``train`` task trains (or resumes, or reuses) one run; an ``eval`` task runs the plan's
suite on a run's models (members and their ensemble) or on the control's ensemble. The
scheduler (:mod:`mutualat.compare.runner`) starts one process per task so that ``--jobs K``
runs K of them side by side with one thread each; the wall and CPU seconds of every
invocation are added to ``tasks/<task>.json`` beside the run, so a study resumed over several
sittings still states what each run cost.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mutualat.config import config_from_data
from mutualat.console import setup_logging
from mutualat.data import load_dataset, subset
from mutualat.device import resolve_device
from mutualat.errors import MutualatError
from mutualat.evaluation import evaluate, load_suite
from mutualat.experiments import run_or_reuse
from mutualat.models import load_model, read_model_meta
from mutualat.models.ensemble import Ensemble
from mutualat.train.checkpoint import atomic_write_bytes


def run_train(spec: dict[str, Any]) -> None:
    run_or_reuse(config_from_data(spec["config"]), Path(spec["run_dir"]))


def run_eval(spec: dict[str, Any]) -> None:
    device = resolve_device(spec["device"])
    data = spec["data"]
    dataset = load_dataset(data["name"], data_dir=data["data_dir"], path=data["path"])
    split = subset(dataset.test, spec["n"], seed=spec["seed"])
    data_info = {"dataset": dataset.name, "split": "test", "n": len(split.labels),
                 "subset": spec["n"], "subset_seed": spec["seed"]}
    suite = load_suite(spec["suite"])
    for job in spec["evaluations"]:  # each checkpoint (last, best) of the same runs
        files = job["models"]
        loaded = {name: load_model(path, device=device) for name, path in files.items()}
        info = {name: {"path": path, **read_model_meta(path)} for name, path in files.items()}
        # The members evaluated alone, and the ensemble of all of them (mean of softmax).
        models = {name: loaded[name] for name in job["evaluated"]}
        model_info = {name: info[name] for name in job["evaluated"]}
        if job["ensemble"]:
            models["ensemble"] = Ensemble(list(loaded.values()))
            model_info["ensemble"] = {"members": info}
        evaluate(models, suite, torch.from_numpy(split.images), torch.from_numpy(split.labels),
                 job["out"], batch_size=spec["batch_size"], device=device, seed=spec["seed"],
                 ensemble=False, checks=spec["checks"], progress=False, data_info=data_info,
                 model_info=model_info)


def record_path(task_file: Path) -> Path:
    return task_file.with_suffix(".record.json")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()  # the trainer's and evaluator's messages reach the task's log file
    if len(argv) != 1:
        print("usage: python -m mutualat.compare.worker TASK.json", file=sys.stderr)
        return 2
    task_file = Path(argv[0])
    task = json.loads(task_file.read_text())
    threads = os.environ.get("MUTUALAT_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    wall, cpu, started = time.perf_counter(), time.process_time(), time.time()
    status = "failed"
    try:
        {"train": run_train, "eval": run_eval}[task["kind"]](task["spec"])
        status = "done"
        return 0
    except MutualatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        status = "interrupted"
        return 130
    finally:
        _add_to_record(record_path(task_file), time.perf_counter() - wall,
                       time.process_time() - cpu, status, started)


def _add_to_record(path: Path, wall_s: float, cpu_s: float, status: str, started: float) -> None:
    """Add one invocation's seconds to the task's record (several if it was resumed); the
    record also keeps when the task first started and last ended (Unix time)."""
    record = {"wall_s": 0.0, "cpu_s": 0.0, "invocations": 0, "started": started}
    if path.is_file():
        try:
            record.update(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            pass
    record["wall_s"] += wall_s
    record["cpu_s"] += cpu_s
    record["invocations"] += 1
    record["status"] = status
    record["ended"] = time.time()
    atomic_write_bytes(path, json.dumps(record, indent=2).encode())


if __name__ == "__main__":
    sys.exit(main())
