"""``mutualat compare``: run a plan's tasks, K at a time, then write the report.

Each task runs in its own process (:mod:`mutualat.compare.worker`) with ``threads`` torch
threads (1 when several run at once: two 2-thread jobs on two cores slowed a MAT run
tenfold). ``mutualat compare`` forks that process from a server that imported torch and the
worker once, at the first task, where the platform has one (Linux, macOS): a new interpreter
spends 4–6 CPU-seconds importing them (torch's optimizer pulls in torch._dynamo), which was
most of a tiny study's time (its 14 tasks: 111 s of wall time with new interpreters, 28 s
forked, two jobs). With ``MUTUALAT_FORK_SERVER=0``, on other platforms, or from
:func:`run_study` without ``fork``, each task starts a new interpreter. A forked task dies
with the scheduler (it holds a pipe only the scheduler writes); one in a new interpreter does
on Linux (the parent-death signal).

After every finished task the study is read again from its folder (:meth:`Study.tasks`),
so a variant's seed runs start as soon as its grid has finished and its evaluations as soon
as a run has. Of the tasks that can start, those of the earliest seed and phase go first and
among them the longest, by the CPU time of finished tasks of their kind
(:func:`mutualat.compare.progress.longest_first`), so a study does not end on one long task
with the other cores idle. A task that fails is reported and not retried in the
same invocation; the others go on. Interrupted (Ctrl-C, a kill), the same command continues:
finished runs and evaluations are reused, interrupted ones resumed. One scheduler per study
folder: it holds the folder's lock (:func:`mutualat.files.hold_lock`) while it runs, and a
second ``mutualat compare`` on the folder (``--status`` and ``--archive`` only read it, and
go on) is refused before it starts anything; without it, the second would start the running
tasks again, each then failing on its run or evaluation folder's own lock.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import multiprocessing
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mutualat.compare import progress, sections
from mutualat.compare.plan import Plan
from mutualat.compare.records import task_records
from mutualat.compare.report import write_report
from mutualat.compare.study import Study
from mutualat.compare.tasks import Task
from mutualat.compare.worker import die_with_parent, forked_main
from mutualat.console import signals_held
from mutualat.errors import MutualatError
from mutualat.files import atomic_write_bytes, hold_lock

logger = logging.getLogger(__name__)

_POLL_S = 0.5
#: How long a task may take to stop after SIGINT (record it, undo a new run folder).
STOP_S = 60.0


class StudyError(MutualatError):
    """Some tasks of a comparison failed (their logs say why)."""


# What the fork server imports once, before the first task is forked from it.
PRELOAD = ["torch", "torch._dynamo", "mutualat.compare.worker"]
#: A forked task's exit status when the fork server died under it (multiprocessing's).
SERVER_LOST = 255


class _Process(Protocol):
    """What the scheduler needs of a task's process (subprocess.Popen has it)."""

    returncode: int | None

    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def wait(self) -> int: ...


class _Forked:
    """A task forked from the server, seen as a :class:`subprocess.Popen`."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        self.returncode: int | None = None
        self._lost = False
        self._stopping = False
        self._handle = _process_handle(process.pid)

    def poll(self) -> int | None:
        self.returncode = self.process.exitcode  # -N when signal N ended it, as Popen
        if self.returncode == SERVER_LOST and not self._lost:
            if self._stopping and self._running():
                # Asked to stop, and still recording that: a batch system's SIGTERM reaches
                # the server too. It gets the time any stopping task gets (STOP_S).
                self.returncode = None
                return None
            # The fork server died (no worker exits 255): its task may still run, and is
            # reported failed, so it must not go on writing into its folder. Once: the pid
            # is not ours to signal after that.
            self._lost = True
            self._signal(signal.SIGKILL)
        if self.returncode is not None and self._handle is not None:
            os.close(self._handle)
            self._handle = None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if sig == signal.SIGINT:
            self._stopping = True
        if self.process.exitcode is None or self._running():
            self._signal(sig)

    def _running(self) -> bool:
        """Whether the task's process runs, which its handle tells even once the server (its
        parent, which reports its exit) is gone; without a handle, assumed not."""
        if self._handle is None:
            return False
        ended = select.poll()  # not select.select, which refuses a descriptor above 1023
        ended.register(self._handle, select.POLLIN)
        return not ended.poll(0)

    def _signal(self, sig: int) -> None:
        try:
            if self._handle is not None:  # never another process that took its pid
                signal.pidfd_send_signal(self._handle, sig)
            else:
                os.kill(self.process.pid, sig)
        except ProcessLookupError:  # ended between the check and the signal
            pass

    def wait(self) -> int:
        self.process.join()
        while self.poll() is None:  # the server lost while the task stops: until it has
            time.sleep(_POLL_S)
        return self.returncode


def _process_handle(pid: int) -> int | None:
    """A pidfd of ``pid`` (Linux 5.3 and later): it becomes readable when that process ends,
    whoever its parent is then; None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


@dataclass
class _Running:
    task: Task
    process: _Process
    started: float


def run_study(plan: Plan, out: Path, jobs: int = 1, threads: int | None = None,
              report: bool = True, fork: bool = False, until: float | None = None) -> Path | None:
    """Run every task of ``plan`` in ``out`` (``jobs`` at a time), then write the report;
    returns the path of ``comparison.md`` (None with ``report=False``, or when ``until``
    stopped the study first).

    ``until`` (a time, as :func:`time.time` gives it): start only a task expected to end by
    then (:func:`mutualat.compare.progress.wall_left`; one with nothing finished like it to
    go by starts, as the first of its kind must), the first in the usual order that fits, so
    that what a sitting with an end (a batch job's time limit, a machine lent for some hours)
    computes is finished work rather than runs cut short; once none fits and none runs, stop.
    The same command continues the study.

    ``fork``: start tasks from a fork server that has imported torch (seconds saved per
    task). As with any multiprocessing fork server, each task re-imports the caller's main
    module, so a script calling this with ``fork=True`` needs the ``if __name__ ==
    "__main__":`` guard; ``mutualat compare`` forks unless ``MUTUALAT_FORK_SERVER=0``."""
    if jobs < 1:
        raise MutualatError(f"--jobs must be >= 1, got {jobs}")
    if threads is None and jobs > 1:
        threads = 1
    out = Path(out)
    lock = hold_lock(out, f"study folder {out} is in use by another `mutualat compare`, which "
                     "runs its tasks; --status says what it runs and --archive copies what has "
                     "finished. Wait for it to end or stop it (nothing was changed)")
    with lock or contextlib.nullcontext():
        return _run(plan, out, jobs, threads, report, fork, until)


def _run(plan: Plan, out: Path, jobs: int, threads: int | None, report: bool, fork: bool,
         until: float | None) -> Path | None:
    """:func:`run_study`'s work, with the study folder's lock held."""
    study = Study(plan, out)
    for folder in ("tasks", "logs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    running: dict[str, _Running] = {}
    failed: dict[str, int] = {}
    launcher = _Launcher(fork, threads)
    left_out: list[str] = []  # what --until kept from starting
    try:
        while True:
            ready, waiting = sections.tasks(study)
            records = task_records(out)
            ready = progress.longest_first(ready, waiting, records, study=study)
            ready = [t for t in ready if t.key not in running and t.key not in failed]
            if until is not None:
                left = progress.wall_left(study, ready, waiting, records)
                fits = [t for t in ready if left[t.key] is None or time.time() + left[t.key] <= until]
                left_out = [t.key for t in ready if t not in fits]
                ready = fits
            while ready and len(running) < jobs:
                task = ready.pop(0)
                running[task.key] = _start(task, out, launcher)
            if not running:
                break
            finished = _wait_any(running)
            for key in finished:
                entry = running.pop(key)
                code = entry.process.returncode
                took = time.perf_counter() - entry.started
                if code == 0:
                    logger.info(f"done   {key} ({took:.0f} s)")
                else:
                    failed[key] = code
                    logger.info(f"FAILED {key} (exit {code}); see "
                                f"{out / 'logs' / (entry.task.slug + '.log')}")
    except BaseException:
        # Ctrl-C, a SIGINT to the scheduler alone (kill -INT, a notebook's interrupt), a
        # SIGTERM (kill, a batch system's stop: the command line raises it as an interrupt), a
        # study that cannot go on (a plan edit, a diverged chosen run) or a fault of the
        # scheduler: the running tasks are interrupted (they record it and resume next time),
        # not orphaned. A task stops at its first SIGINT or SIGTERM and ignores later ones, so
        # one that Ctrl-C or a batch system already reached is not cut short; the scheduler
        # ignores both while it waits for them (a notebook has no command line to do that).
        with signals_held():
            _stop(list(running.values()))
        raise
    finally:
        launcher.close()  # every task has ended; a forked one still running (a bug) dies now
    _, waiting = sections.tasks(study)
    if failed:
        raise StudyError(f"{len(failed)} task(s) failed: {', '.join(sorted(failed))}; "
                         f"{len(waiting)} more wait on them. Fix the cause and run the same command "
                         "again: everything finished is reused")
    if left_out:
        logger.info(f"until  {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(until))}: "
                    f"stopped; {len(left_out)} task(s) ready would not end by then "
                    f"({', '.join(left_out)}), {len(waiting)} more wait on them. The same "
                    "command continues the study")
        return None
    return write_report(study) if report else None


def parse_until(text: str, now: float | None = None) -> float:
    """``--until``'s time: a length from now ("90m", "2h30m", "45s"), a clock time ("03:00",
    its next occurrence, local time) or a date and time ("2026-12-03T03:00", local unless it
    names its offset); a :class:`MutualatError` for anything else, or a time already past."""
    now = time.time() if now is None else now
    length = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if length and any(length.groups()):
        h, m, sec = (int(g or 0) for g in length.groups())
        return now + 3600 * h + 60 * m + sec
    clock = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    try:
        if clock:
            today = datetime.datetime.fromtimestamp(now)
            when = today.replace(hour=int(clock[1]), minute=int(clock[2]), second=0, microsecond=0)
            if when.timestamp() <= now:
                when += datetime.timedelta(days=1)
            return when.timestamp()
        when = datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        when = None
    if when is None:
        raise MutualatError(f"--until {text!r}: give a length (90m, 2h30m), a clock time (03:00) "
                            "or a date and time (2026-12-03T03:00)")
    if when <= now:
        raise MutualatError(f"--until {text!r} has passed already")
    return when


def _stop(running: list[_Running]) -> None:
    """SIGINT to every running task; one still running after :data:`STOP_S` is killed."""
    for entry in running:
        entry.process.send_signal(signal.SIGINT)
    if running:
        logger.info(f"stopping {len(running)} task(s)")
    deadline = time.perf_counter() + STOP_S
    while any(e.process.poll() is None for e in running) and time.perf_counter() < deadline:
        time.sleep(_POLL_S)
    for entry in running:
        if entry.process.poll() is None:
            logger.info(f"killing {entry.task.key}: still running {STOP_S:.0f} s after SIGINT")
            entry.process.send_signal(signal.SIGKILL)
        entry.process.wait()


def _start(task: Task, out: Path, launcher: "_Launcher") -> _Running:
    task_file = out / "tasks" / f"{task.slug}.json"
    atomic_write_bytes(task_file, json.dumps({"key": task.key, "kind": task.kind,
                                              "spec": task.spec}, indent=2).encode())
    log_file = out / "logs" / f"{task.slug}.log"
    with open(log_file, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {task.key}\n")
    process = launcher.start(task.slug, task_file, log_file)
    logger.info(f"start  {task.key}")
    return _Running(task, process, time.perf_counter())


#: A task in a new interpreter (``python -m mutualat.compare.worker`` would import the worker
#: twice, since this module imports it: a warning in every log).
_WORKER = "import sys; from mutualat.compare.worker import main; sys.exit(main())"


class _Launcher:
    """How a study's tasks start: forked from the fork server (``fork``, where the platform
    has one), else each in a new interpreter; and the lifeline of the forked ones, a pipe
    whose writing end only the scheduler holds: a forked task reads end-of-file on it, and
    dies, as soon as the scheduler is gone (:func:`mutualat.compare.worker.forked_main`)."""

    def __init__(self, fork: bool, threads: int | None) -> None:
        self.context = _fork_server() if fork else None
        self.threads = threads
        self._pipe: tuple[Any, Any] | None = None

    def start(self, name: str, task_file: Path, log_file: Path) -> _Process:
        # The environment as it is now (a forked task's server keeps the one it started
        # with), with the thread count for OpenMP, MKL and the worker's torch.set_num_threads.
        env = dict(os.environ)
        if self.threads is not None:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                       MUTUALAT_THREADS=str(self.threads))
        if self.context is not None:
            if self._pipe is None:
                self._pipe = self.context.Pipe(duplex=False)
            forked = self.context.Process(target=forked_main, name=name, args=(
                str(task_file), str(log_file), self._pipe[0], env))
            forked.start()
            return _Forked(forked)
        with open(log_file, "a") as log:
            return subprocess.Popen([sys.executable, "-c", _WORKER, str(task_file)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=die_with_parent if os.name == "posix" else None)

    def close(self) -> None:
        if self._pipe is not None:
            for end in self._pipe:
                end.close()
            self._pipe = None


def _fork_server() -> multiprocessing.context.BaseContext | None:
    """The fork-server context with :data:`PRELOAD`, None where the platform has none. The
    server starts with the first task and ends with this process."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _wait_any(running: dict[str, _Running]) -> list[str]:
    while True:
        done = [key for key, entry in running.items() if entry.process.poll() is not None]
        if done:
            return done
        time.sleep(_POLL_S)
