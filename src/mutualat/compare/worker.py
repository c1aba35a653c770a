"""One task of a comparison, in its own process: :func:`main` with the task file's path
(``python -m mutualat.compare.worker TASK.json`` by hand), or :func:`forked_main` in a
process forked from the scheduler's server that has torch imported.

A ``train`` task trains (or resumes, or reuses) one run; an ``eval`` task runs a suite on a
run's models (members and their ensemble) or on the control's ensemble; a ``transfer`` task
crafts PGD on source models and classifies it with target models. The
scheduler (:mod:`mutualat.compare.runner`) starts one process per task so that ``--jobs K``
runs K of them side by side with one thread each; the wall and CPU seconds of every
invocation are added to ``tasks/<task>.record.json``, so a study resumed over several sittings
still states what each run cost. The record is rewritten every minute while the task runs, so
a process killed without notice (SIGKILL, its scheduler gone) loses at most that minute.

A training run whose loss becomes NaN or infinite is marked ``diverged.json`` in its folder
(and the task succeeds): a grid point that diverges scores -inf instead of stopping the study.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from mutualat.compare.records import (EVALUATED, compare_retrained, file_digest,
                                      set_aside_if_pruned, spec_digest, teacher_record)
from mutualat.config import config_from_data
from mutualat.console import ignore_signal, setup_logging
from mutualat.data import load_dataset, subset
from mutualat.device import machine_record, resolve_device
from mutualat.errors import DivergedError, MutualatError
from mutualat.evaluation import evaluate, load_suite
from mutualat.evaluation.transfer import default_attack, transfer_matrix, write_transfer
from mutualat.experiments import run_or_reuse
from mutualat.models import load_model, read_model_meta
from mutualat.models.ensemble import Ensemble
from mutualat.files import atomic_write_bytes

HEARTBEAT_S = 60.0


def run_train(spec: dict[str, Any]) -> None:
    run_dir = Path(spec["run_dir"])
    aside = set_aside_if_pruned(run_dir)  # the study asks for it again: an evaluation needs it
    if aside is not None:
        print(f"{run_dir} was archived without its model files: set aside in {aside}; "
              "training it again", file=sys.stderr)
    if "teacher" in spec:  # a student: which teacher model it trains against, by content
        record, teacher = teacher_record(run_dir), spec["teacher"]
        started = run_dir.is_dir() and any(run_dir.iterdir())  # else a new run: a new record
        if started and record.is_file() and json.loads(record.read_text())["sha256"] != teacher["sha256"]:
            raise MutualatError(f"{run_dir} was started against another teacher model than "
                                f"{teacher['file']}; move it away to train it again")
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(record, json.dumps(teacher, indent=2).encode())
    try:
        run_or_reuse(config_from_data(spec["config"]), run_dir)
    except DivergedError as exc:
        atomic_write_bytes(run_dir / "diverged.json",
                           json.dumps({"error": str(exc), "time": time.time()}, indent=2).encode())
        print(f"diverged: {exc}", file=sys.stderr)
    again = compare_retrained(run_dir)
    if again is not None and again["differs"]:
        print(f"trained again, {run_dir} differs from its archived weights ({', '.join(again['differs'])}):"
              " a new run; its validation score replaces the archived one, and evaluations of "
              "the old weights are refused until moved away", file=sys.stderr)


def _test_images(spec: dict[str, Any]):
    """The task's device, dataset and its class-balanced, seeded test subset."""
    data = spec["data"]
    dataset = load_dataset(data["name"], data_dir=data["data_dir"], path=data["path"])
    return resolve_device(spec["device"]), dataset, subset(dataset.test, spec["n"], seed=spec["seed"])


def run_eval(spec: dict[str, Any]) -> None:
    device, dataset, split = _test_images(spec)
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
        # Which model files these numbers are of, by content (the study reuses the folder
        # only while they are unchanged). Written last: the evaluator refuses a new folder
        # that already holds files.
        digests = {name: file_digest(path) for name, path in files.items()}
        atomic_write_bytes(Path(job["out"]) / EVALUATED, json.dumps(digests, indent=2).encode())


def run_transfer(spec: dict[str, Any]) -> None:
    """PGD crafted on every source model, classified by every target (the paper's Table 4)."""
    device, _, split = _test_images(spec)
    loaded: dict[str, Any] = {}  # one module per file: a model both source and target is one
    for path in {**spec["sources"], **spec["targets"]}.values():
        loaded.setdefault(path, load_model(path, device=device))
    attack = default_attack(spec["norm"], spec["eps"], steps=spec["steps"], step_size=spec["step_size"])
    result = transfer_matrix({s: loaded[p] for s, p in spec["sources"].items()},
                             {t: loaded[p] for t, p in spec["targets"].items()},
                             split.images, split.labels, attack, batch_size=spec["batch_size"],
                             device=device, seed=spec["seed"], progress=False)
    result["models"] = {"sources": spec["sources"], "targets": spec["targets"]}
    write_transfer(result, spec["out"])


def record_path(task_file: Path) -> Path:
    return task_file.with_suffix(".record.json")


def forked_main(task_file: str, log_file: str, lifeline: Any, environ: dict[str, str]) -> None:
    """A task in a process forked from the scheduler's pre-imported server
    (:mod:`mutualat.compare.runner`): what ``python -m mutualat.compare.worker TASK.json``
    does in a fresh interpreter, without importing torch again (seconds per task, most of a
    tiny study's time). Output goes to ``log_file``; the exit status is :func:`main`'s.

    ``lifeline`` is the reading end of a pipe whose only writer is the scheduler: it reads
    end-of-file when the scheduler is gone (kill -9 included), and the task then dies at once,
    so that no orphan keeps training into a folder the next invocation resumes. (The parent
    of a forked task is the server, which outlives the scheduler while any task runs, so the
    parent-death signal of :func:`die_with_parent` would not reach it.) ``environ`` is the
    task's environment, as a new interpreter would get it (the server keeps the one it
    started with; torch.set_num_threads in :func:`main` applies its thread count, which the
    server's OpenMP read before it was set)."""
    stop_once_on_interrupt()
    threading.Thread(target=_die_with, args=(lifeline,), daemon=True).start()
    os.environ.clear()
    os.environ.update(environ)
    log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.exit(main([task_file]))


def stop_once_on_interrupt() -> None:
    """SIGINT is how the scheduler stops a task: the first one raises KeyboardInterrupt (the
    task records "interrupted" and resumes next time), later ones are ignored, so that a
    Ctrl-C that reached the task and the scheduler's own SIGINT cannot cut the task's
    clean-up short (its record, a new run folder's undoing). Installed even when the task
    started with SIGINT ignored (nohup, a script's background job), which it would inherit.
    A SIGTERM sent to the task itself (a batch system signals every process of a job) stops
    it the same way, and counts as the first."""
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


def _stop(signum: int, frame: Any) -> None:
    # Later ones run a handler that does nothing rather than none: one that arrived with this
    # one (a batch system's SIGTERM and the scheduler's SIGINT) is already pending, and Python
    # reports a pending signal whose handler became SIG_IGN as "ignored due to race condition".
    signal.signal(signal.SIGINT, ignore_signal)
    signal.signal(signal.SIGTERM, ignore_signal)
    raise KeyboardInterrupt


def _die_with(lifeline: Any) -> None:
    try:
        lifeline.recv_bytes()  # the scheduler never writes: this returns only at its end
    except (EOFError, OSError):
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent() -> None:
    """In a task started as a new interpreter, before it runs: SIGINT's default disposition
    (an inherited "ignored" would outlive the interpreter's start, when the scheduler may
    already ask it to stop), and ask Linux to kill it when its parent, the scheduler, dies
    (kill -9 included), so that no orphan keeps training into a folder the next invocation
    resumes. Elsewhere that request is a no-op (the run folder's lock still refuses a second
    trainer)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def machine(task: dict[str, Any]) -> dict[str, Any] | None:
    """The machine a task runs on, as its record keeps it; None if its device cannot be
    resolved here (the task then fails with the reason)."""
    spec = task.get("spec", {})
    name = ((spec.get("config") or {}) if task.get("kind") == "train" else spec).get("device", "auto")
    try:
        device = resolve_device(name)
        return machine_record(device)
    except (MutualatError, RuntimeError):  # an unknown device; a GPU that cannot be queried
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()  # the trainer's and evaluator's messages reach the task's log file
    if len(argv) != 1:
        print("usage: python -m mutualat.compare.worker TASK.json", file=sys.stderr)
        return 2
    task_file = Path(argv[0])
    task = json.loads(task_file.read_text())
    stop_once_on_interrupt()
    threads = os.environ.get("MUTUALAT_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    record = Record(record_path(task_file), machine(task), task["spec"])
    status = "failed"
    try:
        {"train": run_train, "eval": run_eval, "transfer": run_transfer}[task["kind"]](task["spec"])
        status = "done"
        return 0
    except MutualatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        status = "interrupted"
        return 130
    finally:
        record.close(status)


class Record:
    """One invocation's wall and CPU seconds added to the task's record (several if it was
    resumed), which also keeps when the task first started and last ended (Unix time) and
    ``machines``: each distinct machine an invocation ran on (its CPU, cores, GPU, torch
    threads; the report states these, not the machine that renders it). It is written at the
    start and every :data:`HEARTBEAT_S` seconds with status ``running``, then once more at
    the end with the invocation's status. A task that had finished and runs again starts a
    new record, the finished ones kept in its list ``earlier``; so does one whose ``spec`` (the
    task's, kept as a digest) differs from the record's: an unfinished task whose plan or
    suite changed starts over, and what it spent before is not this run's."""

    def __init__(self, path: Path, machine: dict[str, Any] | None = None,
                 spec: dict[str, Any] | None = None) -> None:
        self.path = path
        self.wall, self.cpu, now = time.perf_counter(), time.process_time(), time.time()
        self.base = {"wall_s": 0.0, "cpu_s": 0.0, "invocations": 0, "started": now}
        try:
            previous = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, json.JSONDecodeError):
            previous = None
        digest = None if spec is None else spec_digest(spec)
        changed = (isinstance(previous, dict) and digest is not None
                   and previous.get("spec") not in (None, digest))
        if isinstance(previous, dict) and (previous.get("status") == "done" or changed):
            # A finished task run again (its result moved away, or the plan asks it for more),
            # or an unfinished one whose spec changed (a plan or suite edited): a record of its
            # own, so that this run's cost is not the two added up; the earlier ones stay under
            # "earlier", which the study's cost still counts.
            self.base["earlier"] = [{k: v for k, v in previous.items() if k != "earlier"},
                                    *previous.get("earlier", [])]
        elif isinstance(previous, dict):
            self.base.update(previous)
        self.base["invocations"] += 1
        if digest is not None:
            self.base["spec"] = digest
        if machine is not None and machine not in self.base.get("machines", []):
            self.base["machines"] = [*self.base.get("machines", []), machine]
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.write("running")
        self.beat = threading.Thread(target=self._beat, daemon=True)
        self.beat.start()

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            self.write("running")

    def write(self, status: str) -> None:
        with self.lock:
            record = dict(self.base)
            record["wall_s"] += time.perf_counter() - self.wall
            record["cpu_s"] += time.process_time() - self.cpu  # the whole process: every thread
            record["status"] = status
            record["ended"] = time.time()
            atomic_write_bytes(self.path, json.dumps(record, indent=2).encode())

    def close(self, status: str) -> None:
        self.stopped.set()
        self.beat.join()  # no heartbeat after the last write
        self.write(status)


if __name__ == "__main__":
    sys.exit(main())
