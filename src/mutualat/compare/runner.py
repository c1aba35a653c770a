"""``mutualat compare``: run a plan's tasks, K at a time, then write the report.

Each task runs in its own process (:mod:`mutualat.compare.worker`) with ``threads`` torch
threads (1 when several run at once: two 2-thread jobs on two cores slowed a MAT run
tenfold). After every finished task the study is read again from its folder
(:meth:`Study.tasks`), so a variant's seed runs start as soon as its grid has finished and
its evaluations as soon as a run has. A task that fails is reported and not retried in the
same invocation; the others go on. Interrupted (Ctrl-C, a kill), the same command continues:
finished runs and evaluations are reused, interrupted ones resumed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mutualat.compare import sections
from mutualat.compare.plan import Plan
from mutualat.compare.report import write_report
from mutualat.compare.study import Study, Task
from mutualat.errors import MutualatError
from mutualat.train.checkpoint import atomic_write_bytes

logger = logging.getLogger(__name__)

_POLL_S = 0.5


class StudyError(MutualatError):
    """Some tasks of a comparison failed (their logs say why)."""


@dataclass
class _Running:
    task: Task
    process: subprocess.Popen
    started: float
    log: object


def run_study(plan: Plan, out: Path, jobs: int = 1, threads: int | None = None,
              report: bool = True) -> Path | None:
    """Run every task of ``plan`` in ``out`` (``jobs`` at a time), then write the report;
    returns the path of ``comparison.md`` (None with ``report=False``)."""
    if jobs < 1:
        raise MutualatError(f"--jobs must be >= 1, got {jobs}")
    if threads is None and jobs > 1:
        threads = 1
    out = Path(out)
    study = Study(plan, out)
    for folder in ("tasks", "logs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    running: dict[str, _Running] = {}
    failed: dict[str, int] = {}
    try:
        while True:
            ready, _ = sections.tasks(study)
            ready = [t for t in ready if t.key not in running and t.key not in failed]
            while ready and len(running) < jobs:
                task = ready.pop(0)
                running[task.key] = _start(task, out, threads)
            if not running:
                break
            finished = _wait_any(running)
            for key in finished:
                entry = running.pop(key)
                entry.log.close()
                code = entry.process.returncode
                took = time.perf_counter() - entry.started
                if code == 0:
                    logger.info(f"done   {key} ({took:.0f} s)")
                else:
                    failed[key] = code
                    logger.info(f"FAILED {key} (exit {code}); see "
                                f"{out / 'logs' / (entry.task.slug + '.log')}")
    except KeyboardInterrupt:
        for entry in running.values():
            entry.process.wait()
        raise
    except MutualatError:
        # The study cannot go on (a plan edit, a diverged chosen run): the running tasks are
        # interrupted as by Ctrl-C (they record it and resume next time), not orphaned.
        for entry in running.values():
            entry.process.send_signal(signal.SIGINT)
        for entry in running.values():
            entry.process.wait()
            entry.log.close()
        raise
    _, waiting = sections.tasks(study)
    if failed:
        raise StudyError(f"{len(failed)} task(s) failed: {', '.join(sorted(failed))}; "
                         f"{waiting} more wait on them. Fix the cause and run the same command "
                         "again: everything finished is reused")
    return write_report(study) if report else None


def _start(task: Task, out: Path, threads: int | None) -> _Running:
    task_file = out / "tasks" / f"{task.slug}.json"
    atomic_write_bytes(task_file, json.dumps({"key": task.key, "kind": task.kind,
                                              "spec": task.spec}, indent=2).encode())
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   MUTUALAT_THREADS=str(threads))
    log = open(out / "logs" / f"{task.slug}.log", "a")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {task.key}\n")
    log.flush()
    process = subprocess.Popen([sys.executable, "-m", "mutualat.compare.worker", str(task_file)],
                               stdout=log, stderr=subprocess.STDOUT, env=env,
                               preexec_fn=_die_with_parent)
    logger.info(f"start  {task.key}")
    return _Running(task, process, time.perf_counter(), log)


def _die_with_parent() -> None:
    """In the task's process, before it runs: ask Linux to kill it when the scheduler dies
    (kill -9 included), so that no orphan keeps training into a folder the next invocation
    resumes. Elsewhere a no-op (the run folder's lock still refuses a second trainer)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _wait_any(running: dict[str, _Running]) -> list[str]:
    while True:
        done = [key for key, entry in running.items() if entry.process.poll() is not None]
        if done:
            return done
        time.sleep(_POLL_S)
