"""`mutualat compare`: plans checked before anything runs, the paired interval, selection on
the validation split only, a tiny plan end to end (killed, resumed, reused), and the report
table equal to its JSON."""

from __future__ import annotations

import datetime
import json
import statistics
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mutualat.cli import main
from mutualat.compare import Study, load_plan, progress, provenance, report, runner, sections
from mutualat.compare.plan import setting_label
from mutualat.compare.records import spec_digest
from mutualat.compare.report import markdown
from mutualat.compare.stats import paired_interval, t_quantile_975
from mutualat.compare.study import Task
from mutualat.config import to_dict
from mutualat.compare.worker import Record, run_train
from mutualat.errors import ConfigError, MutualatError

from conftest import script_module, set_last_validation_score

TINY_SUITE = """\
name: tiny
per_attack: cumulative
threats:
  linf: {eps: 0.1}
attacks:
  - {id: pgd-5, name: pgd, params: {steps: 5, early_stop: true}}
  - {id: fgsm, name: fgsm}
"""

#: What every run of a tiny test plan shares (a plan's `set`): seconds per run on the embedded data.
TINY_SET = """\
set:
  data.name: fashion-mnist-embedded
  data.train_subset: 128
  data.val_subset: 64
  data.test_subset: 32
  data.batch_size: 32
  optim.epochs: 2
  attack.steps: 1
  eval.pgd_steps: 2
  eval.test_pgd_steps: 1
  models: [tinycnn]
  progress: false
  deterministic: true
  device: cpu
"""

TINY_PLAN = """\
name: tiny
description: A tiny plan for tests.
""" + TINY_SET + """\
variants:
  at: {method.name: at, method.params.loss: lc}
  mat: {method.name: mat, models: [tinycnn, tinycnn], method.params.alpha_warmup: 0.5}
grid:
  lr: [0.02, 5e-2]
seeds: [0, 2]
checkpoints: [last, best]
baseline: at
control: {variant: at, members: 2}
suite: tiny-suite.yaml
eval: {n: 40, batch_size: 40, checks: false, members: all, ensembles: [last]}
"""

#: The tiny plan with runs long enough (about 20 s) not to end during a test of stopping them.
LONG_PLAN = TINY_PLAN.replace("optim.epochs: 2", "optim.epochs: 30")


def _write_plan(folder: Path, text: str = TINY_PLAN) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny-suite.yaml").write_text(TINY_SUITE)
    path = folder / "plan.yaml"
    path.write_text(text)
    return path


def test_paired_interval_on_hand_made_numbers():
    p = paired_interval([0.01, 0.02, 0.03])
    half = 4.303 * 0.01 / 3 ** 0.5
    assert p.mean == pytest.approx(0.02)
    assert (p.low, p.high) == pytest.approx((0.02 - half, 0.02 + half))
    assert not p.excludes_zero  # 0.02 - 0.0248 < 0
    tight = paired_interval([0.020, 0.021, 0.019])
    assert tight.excludes_zero and tight.low > 0
    single = paired_interval([0.05])
    assert single.low is None and not single.excludes_zero
    assert t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042
    # beyond the table: the series, against the exact quantiles (scipy.stats.t.ppf(0.975, df))
    for df, exact in ((31, 2.039513), (40, 2.021075), (60, 2.000298), (120, 1.979930)):
        assert t_quantile_975(df) == pytest.approx(exact, abs=2e-4)
    assert t_quantile_975(10**6) == pytest.approx(1.959964, abs=1e-5)


@pytest.mark.parametrize("edit, message", [
    (("baseline: at", "baseline: atx"), "baseline must name a variant"),
    (("seeds: [0, 2]", "seeds: [0, 0]"), "seeds must be a list of distinct"),
    (("seeds: [0, 2]", "seeds: [0, 1]"), "seeds 0 and 1 are closer than the largest cohort"),
    (("ensembles: [last]", "ensembles: []"), "control is an ensemble, so eval.ensembles"),
    (("lr: [0.02, 5e-2]", "lr: []"), "grid.lr must be a non-empty list"),
    (("lr: [0.02, 5e-2]", "lr: [0.02, 5e-2]\n  attack.eps: [0.1, 0.3]"),
     r"variant at \(.*\) trains against linf eps 0.3, which suite 'tiny' does not evaluate"),
    (("method.params.loss: lc}", "method.params.loss: lc, optim.epochz: 3}"), "variant at .*optim"),
    (("method.params.alpha_warmup: 0.5}", "method.params.alpha_warmup: 2}"), "variant mat .*alpha_warmup"),
    (("suite: tiny-suite.yaml", "suite: no-such-suite"), "no-such-suite"),
    (("name: tiny\n", "name: tiny\nbogus: 1\n"), "unknown key"),
    (("control: {variant: at, members: 2}", "control: {variant: mat, members: 2}"), "control"),
    (("name: tiny\n", "- name: tiny\n"), r"plan file .*plan.yaml is not valid YAML"),
    ((TINY_PLAN, "[tiny]\n"), r"plan file .*plan.yaml must hold a mapping at the top level"),
    ((TINY_PLAN, ""), "variants must name at least one variant"),
])
def test_a_bad_plan_is_refused_before_anything_runs(tmp_path, capsys, edit, message):
    assert_edit_refused(_write_plan, TINY_PLAN, edit, tmp_path, capsys, message)


def assert_edit_refused(write, text: str, edit: tuple[str, str], tmp_path: Path, capsys,
                        message: str) -> None:
    """The plan ``text`` with ``edit`` (old, new) applied, written by ``write(folder, text)``:
    `mutualat compare` refuses it with an error matching ``message`` and writes nothing."""
    old, new = edit
    assert old in text
    plan, out = write(tmp_path / "plan", text.replace(old, new, 1)), tmp_path / "out"
    assert main(["compare", str(plan), "--out", str(out)]) == 2
    stderr = capsys.readouterr().err
    assert re.search(message, stderr), stderr
    assert not out.exists()


def test_selection_never_reads_the_test_split(tmp_path, monkeypatch):
    """The grid trained twice, once with the test labels permuted: the same scores and choice."""
    from mutualat.train import trainer as trainer_module

    plan = load_plan(_write_plan(tmp_path / "plan"))
    original = trainer_module.load_dataset

    permuted_loads = []

    def permuted_test_labels(*args, **kwargs):
        dataset = original(*args, **kwargs)
        permuted_loads.append(1)
        labels = dataset.test.labels.copy()
        dataset.test.labels[:] = np.random.default_rng(0).permutation(labels)
        assert (dataset.test.labels != labels).any()
        return dataset

    selections = []
    for name, patch in (("plain", False), ("permuted", True)):
        if patch:
            monkeypatch.setattr(trainer_module, "load_dataset", permuted_test_labels)
        study = Study(plan, tmp_path / name)
        for task in study.tasks()[0]:
            if task.priority == (0, 0):  # the grid
                run_train(task.spec)
        selections.append({v: study.selection(v) for v in plan.variants})
    plain, permuted = selections
    for variant in plan.variants:
        assert plain[variant].scores == permuted[variant].scores
        assert plain[variant].chosen == permuted[variant].chosen
    # Every grid run of the second study read the permuted test labels (their own
    # end-of-run test used them; on 32 images a weak model's accuracy may still tie).
    assert len(permuted_loads) == sum(len(plan.settings(v)) for v in plan.variants)


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "new-interpreter"])
def test_a_failing_task_gives_its_exit_status_and_its_error_in_its_log(tmp_path, fork):
    """Both ways of starting a task (forked from the pre-imported server, or a new
    interpreter) run the worker with its log and record, and report its exit status."""
    for folder in ("tasks", "logs"):
        (tmp_path / folder).mkdir()
    task = Task("train/bad/seed0", "train", {"run_dir": str(tmp_path / "run"),
                                             "config": {"optim": {"epochz": 1}}}, (0, 0))
    launcher = runner._Launcher(fork, 1)
    try:
        entry = runner._start(task, tmp_path, launcher)
        assert isinstance(entry.process, runner._Forked) == fork
        assert entry.process.wait() == 2
    finally:
        launcher.close()
    log = (tmp_path / "logs" / "train__bad__seed0.log").read_text()
    assert "=== " in log and "error:" in log and "epochz" in log, log
    assert "Warning" not in log, log  # e.g. the worker module imported twice
    record = json.loads((tmp_path / "tasks" / "train__bad__seed0.record.json").read_text())
    assert record["status"] == "failed" and record["invocations"] == 1


#: A scheduler's part, run in a process of its own (argv: folder, fork|new): start the task
#: of folder/spec.json and wait until it trains; the test adds what follows.
TASK_TRAINING = """
import json, multiprocessing.forkserver, os, signal, sys, time
from pathlib import Path
from mutualat.compare import runner
from mutualat.compare.study import Task
out, fork = Path(sys.argv[1]), sys.argv[2] == "fork"
spec = json.loads((out / "spec.json").read_text())
launcher = runner._Launcher(fork, 1)
entry = runner._start(Task("train/at/seed0", "train", spec, (0, 0)), out, launcher)
deadline = time.perf_counter() + 60
while not (Path(spec["run_dir"]) / "metrics.jsonl").is_file() and time.perf_counter() < deadline:
    time.sleep(0.2)
"""


def _scheduler_part(tmp_path: Path, then: str, fork: bool, **popen) -> list[str]:
    """Run :data:`TASK_TRAINING` and ``then`` on a tiny run long enough (about 20 s) not to
    end during the test, in a process of its own (its fork server too); its printed words."""
    plan = load_plan(_write_plan(tmp_path / "plan", LONG_PLAN))
    for folder in ("tasks", "logs"):
        (tmp_path / folder).mkdir()
    config = to_dict(plan.config("at", plan.settings("at")[0], 0))
    (tmp_path / "spec.json").write_text(json.dumps({"run_dir": str(tmp_path / "run"), "config": config}))
    done = subprocess.run([sys.executable, "-c", TASK_TRAINING + then + "\nlauncher.close()\n",
                           str(tmp_path), "fork" if fork else "new"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "new-interpreter"])
def test_a_task_stops_on_the_schedulers_sigint_even_if_started_with_sigint_ignored(tmp_path, fork):
    """A scheduler started with nohup or in a script's background inherits SIGINT ignored
    (and so does its fork server); its tasks must still stop, and record it, when it sends
    them SIGINT (on a plan edit, on its own interrupt)."""
    then = "entry.process.send_signal(signal.SIGINT)\nprint(entry.process.wait())"
    words = _scheduler_part(tmp_path, then, fork,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert words[-1] == "130", words
    record = json.loads((tmp_path / "tasks" / "train__at__seed0.record.json").read_text())
    assert record["status"] == "interrupted"
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_task_whose_fork_server_died_is_failed_and_killed(tmp_path):
    """The fork server killed under a running task (the OOM killer, a stray kill): the
    scheduler sees the task fail, and the task, which would go on training into a folder
    reported failed, is killed."""
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc is Linux's")
    then = """
os.kill(multiprocessing.forkserver._forkserver._forkserver_pid, signal.SIGKILL)
time.sleep(1.0)
status = entry.process.poll()
time.sleep(1.0)
try:
    state = Path(f"/proc/{entry.process.process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
except OSError:
    state = "gone"
print(status, state)"""
    status, state = _scheduler_part(tmp_path, then, True)[-2:]
    assert int(status) == runner.SERVER_LOST
    assert state in ("gone", "Z", "X"), f"the task still runs ({state})"
    assert not (tmp_path / "run" / "results.json").exists()


def _compare(plan: Path, out: Path, *extra: str, env: dict[str, str] | None = None,
             **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "mutualat", "compare", str(plan), "--out", str(out),
                             "--jobs", "2", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **popen)


def _training_study(tmp_path: Path, env: dict[str, str] | None = None,
                    **popen) -> tuple[subprocess.Popen, Path]:
    """The tiny plan with runs long enough (about 20 s) not to end during a test, started
    and waited on until a task trains."""
    plan = _write_plan(tmp_path / "plan", LONG_PLAN)
    out = tmp_path / "out"
    study = _compare(plan, out, env=env, **popen)
    for line in study.stdout:
        if line.startswith("start"):
            break
    deadline = time.perf_counter() + 60
    while not list(out.glob("runs/*/*/*/metrics.jsonl")) and time.perf_counter() < deadline:
        time.sleep(0.2)
    return study, out


def _descendants(pid: int) -> list[int] | None:
    """The process ids below ``pid`` (children, theirs, ...); None without /proc."""
    if not Path("/proc/self/stat").is_file():
        return None
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        below = [p for p, pp in parent.items() if pp in frontier]
        found += below
        frontier = below
    return found


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> tuple[Path, Path, dict[str, int]]:
    """The tiny plan, killed as a task starts after its first finished task, then run to the end."""
    root = tmp_path_factory.mktemp("compare")
    plan = _write_plan(root / "plan")
    out = root / "out"
    tick = time.perf_counter()
    first = _compare(plan, out)
    done = False
    for line in first.stdout:  # kill as a task starts, once another has finished
        done = done or line.startswith("done")
        if done and line.startswith("start"):
            break
    first.send_signal(signal.SIGKILL)  # the scheduler dies, and its running tasks with it
    first.wait()
    time.sleep(1.0)
    finished_before = {str(p): p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/results.json")}
    assert finished_before, "nothing had finished before the kill"
    second = _compare(plan, out)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    took = time.perf_counter() - tick
    return plan, out, {"finished_before": finished_before, "seconds": took, "output": output}


@pytest.mark.parametrize("fork", ["1", "0"], ids=["forked", "new-interpreter"])
def test_no_task_outlives_its_killed_scheduler(tmp_path, fork):
    """kill -9 of the scheduler ends its running tasks: a forked one through the pipe only
    the scheduler writes, one in a new interpreter through Linux's parent-death signal; an
    orphan would go on training into a folder the next invocation resumes."""
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc and the parent-death signal are Linux's")
    first, out = _training_study(tmp_path, env={"MUTUALAT_FORK_SERVER": fork})
    tasks = _descendants(first.pid)
    assert tasks, "no task was running at the kill"
    first.send_signal(signal.SIGKILL)
    first.wait()
    deadline = time.perf_counter() + 5
    while any(_alive(pid) for pid in tasks) and time.perf_counter() < deadline:
        time.sleep(0.1)
    alive = [pid for pid in tasks if _alive(pid)]
    assert not alive, f"processes {alive} outlived the killed scheduler by 5 s"
    assert not list(out.glob("runs/*/*/*/results.json"))  # no run went on to its end
    # and nothing complains on the way: tqdm's lock was a semaphore the resource tracker
    # called leaked when a killed task could not release it
    said = first.stdout.read() + "".join(p.read_text() for p in out.glob("logs/*.log"))
    assert "leaked" not in said, said


def test_a_second_scheduler_on_a_study_in_use_is_refused_and_starts_nothing(tmp_path, capsys):
    """Two schedulers on one study folder (a `--write` typed while the study runs) would both
    start the running tasks (here trainings), whose second copies would then fail on their
    folders' locks; the second is refused before it starts anything, while --status and
    --archive, which only read the folder, still answer. The second runs in this process
    (the lock is the folder's, whoever holds it), the first as the user's would. Its SIGINT at
    the default, whatever the test runner's: a suite run as a background job of a script
    inherits SIGINT ignored, and the first scheduler then ran its study to the end."""
    first, out = _training_study(tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                            signal.SIG_DFL))
    try:
        plan = str(tmp_path / "plan" / "plan.yaml")
        assert main(["compare", plan, "--out", str(out), "--write", str(tmp_path / "doc.md")]) == 2
        said = capsys.readouterr()
        assert f"study folder {out} is in use by another `mutualat compare`" in said.err
        assert "start" not in said.out + said.err.split("error:")[0]
        # each task started once (by the first scheduler, which may have gone on meanwhile)
        assert all(p.read_text().count("=== ") == 1 for p in out.glob("logs/*.log"))
        assert not (tmp_path / "doc.md").exists()
        assert main(["compare", plan, "--out", str(out), "--status"]) == 0
        assert "running" in capsys.readouterr().out
        assert main(["compare", plan, "--out", str(out), "--archive", str(tmp_path / "copy")]) == 0
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGINT


@pytest.mark.parametrize("whom, sigs", [
    ("group", [signal.SIGINT]), ("scheduler", [signal.SIGINT]), ("group", [signal.SIGTERM]),
    ("scheduler", [signal.SIGTERM]), ("scheduler", [signal.SIGTERM, signal.SIGTERM]),
    ("scheduler", [signal.SIGINT, signal.SIGTERM]), ("scheduler", [signal.SIGTERM, signal.SIGINT])],
    ids=["ctrl-c", "kill-int", "batch-stop", "kill", "kill-twice", "ctrl-c-then-kill",
         "kill-then-ctrl-c"])
def test_an_interrupt_stops_the_running_tasks_which_record_it(tmp_path, whom, sigs):
    """Ctrl-C (SIGINT to the whole process group), a SIGINT to the scheduler alone (kill
    -INT, a notebook's interrupt), a SIGTERM to every process (a batch system's stop) or to
    the scheduler alone (kill), and a second signal on top while the scheduler stops its
    tasks: the running tasks stop and record "interrupted", and the scheduler exits with 128
    + the signal it took (the first) and asks for a rerun."""
    # SIGINT's default disposition, whatever the test runner's: a process started in the
    # background of a non-interactive shell inherits SIGINT ignored, and Python keeps that.
    # SIGTERM alone is tried with SIGINT ignored, as such a job (nohup ... &, from a script)
    # has it.
    keep = signal.SIG_DFL if signal.SIGINT in sigs else signal.SIG_IGN
    first, out = _training_study(tmp_path, start_new_session=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, keep))
    for sig in sigs:
        if whom == "group":
            os.killpg(first.pid, sig)
        else:
            first.send_signal(sig)
        time.sleep(0.002)
    output, _ = first.communicate(timeout=120)
    # Two signals 2 ms apart may both be pending when Python next runs its handlers, which it
    # does in signal-number order (SIGINT first): either may then be the one the exit reports.
    assert first.returncode in {128 + sig for sig in sigs}, output
    assert "rerun the same command to resume" in output
    statuses = [json.loads(p.read_text())["status"] for p in out.glob("tasks/*.record.json")]
    assert "interrupted" in statuses and "running" not in statuses, statuses
    # A task that got two signals at once says nothing of it (Python's "Signal 15 ignored due
    # to race condition", when the second found its handler gone).
    logs = "".join(p.read_text() for p in out.glob("logs/*.log"))
    assert "race condition" not in logs and "Traceback" not in logs, logs


def test_a_stopping_task_records_it_though_its_fork_server_dies(tmp_path):
    """A batch system's SIGTERM reaches the fork server too, which dies of it. The scheduler,
    stopping its tasks, then no longer learns their exit status from the server: it must
    still give them the time to record "interrupted", not kill them as it kills the tasks of
    a server lost mid-study. Made certain here by holding the tasks (SIGSTOP) while the
    scheduler is told to stop and the server is killed."""
    handle = runner._process_handle(os.getpid())
    if handle is None or not sys.platform.startswith("linux"):
        pytest.skip("needs /proc and a pidfd (Linux 5.3 and later), which outlives the server")
    os.close(handle)
    first, out = _training_study(tmp_path, start_new_session=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    below = _descendants(first.pid)
    servers = [pid for pid in below if "forkserver" in _cmdline(pid) and _parent(pid) == first.pid]
    tasks = [pid for pid in below if servers and _parent(pid) == servers[0]]
    assert len(servers) == 1 and tasks, [(_cmdline(pid), _parent(pid)) for pid in below]
    for pid in tasks:
        os.kill(pid, signal.SIGSTOP)
    try:
        first.send_signal(signal.SIGTERM)
        said = []
        for line in first.stdout:  # the scheduler has sent SIGINT (pending in the held tasks)
            said.append(line)
            if line.startswith("stopping"):
                break
        assert said and said[-1].startswith("stopping"), "".join(said)
        os.kill(servers[0], signal.SIGKILL)
        time.sleep(1.5)  # and seen the server gone
    finally:
        for pid in tasks:
            os.kill(pid, signal.SIGCONT)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 143, output
    statuses = [json.loads(p.read_text())["status"] for p in out.glob("tasks/*.record.json")]
    assert statuses and all(s == "interrupted" for s in statuses), statuses


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def test_a_tiny_plan_runs_end_to_end(finished_study):
    plan, out, facts = finished_study
    for name in ("comparison.json", "comparison.md", "curves.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "comparison.json").read_text())
    rows = {(r["row"], r["checkpoint"]) for r in data["rows"]}
    # Ensembles at the last epoch only (eval.ensembles): the control has no best row.
    assert rows == {(name, c) for c in ("last", "best") for name in ("at", "mat (members)")} | {
        ("mat (ensemble)", "last"), ("at ×2 ensemble (control)", "last")}
    ensemble = next(r for r in data["rows"] if r["row"] == "mat (ensemble)")
    control = next(r for r in data["rows"] if r["kind"] == "control")
    assert ensemble["paired_control"]["r_worst"]["differences"] == pytest.approx(
        [ensemble["seeds"][s]["r_worst"] - control["seeds"][s]["r_worst"] for s in ensemble["seeds"]])
    # Every grid point was trained once with the first seed; the chosen one for every seed;
    # the control's second members share the seed's data and start from seed + 1.
    runs = {(r["variant"], r["setting"], r["run"]) for r in data["runs"]}
    chosen = {v: s["label"] for v, s in data["selection"].items()}
    assert {("at", "lr0.02", "seed0"), ("at", "lr0.05", "seed0"), ("mat", "lr0.02", "seed0"),
            ("mat", "lr0.05", "seed0")} <= runs
    assert {("at", chosen["at"], "seed2"), ("mat", chosen["mat"], "seed2"),
            ("at", chosen["at"], "seed0-init1"), ("at", chosen["at"], "seed2-init3")} <= runs
    assert len(runs) == 8


def _set_validation(run: Path, per_role: dict[str, list[float]]) -> None:
    """Rewrite a run's per-epoch validation PGD accuracy of each role (metrics.jsonl)."""
    lines = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "epoch":
            for role, values in per_role.items():
                record[f"val_pgd/{role}"] = values[record["epoch"] - 1]
        lines.append(json.dumps(record))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_the_robust_overfitting_table_reads_each_seeds_curve(finished_study, tmp_path):
    """Made-up validation curves: the best epoch (the first on ties, for a cohort of the
    members' mean), the best and last accuracy and the fall between them, mean ± std over
    seeds, in the JSON and its table."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    study = Study(load_plan(plan), out)
    at, mat = study.selection("at").chosen, study.selection("mat").chosen
    _set_validation(study.run_dir("at", at, 0), {"model": [1.0, 0.9]})  # still the grid's best
    _set_validation(study.run_dir("at", at, 2), {"model": [0.2, 0.5]})
    _set_validation(study.run_dir("mat", mat, 2), {"h1": [0.2, 0.6], "h2": [0.4, 0.0]})  # a tie
    metrics = study.run_dir("mat", mat, 0) / "metrics.jsonl"  # its first epoch's record lost
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if json.loads(line).get("event") != "epoch"
                               or json.loads(line)["epoch"] != 1))
    data = report.collect(study)
    assert data["overfitting"]["mat"]["seeds"][0]["best_epoch"] == 2  # by the record's number
    assert data["overfitting"]["mat"]["seeds"][0]["epochs"] == 2
    entry = data["overfitting"]["at"]
    assert [(s["best_epoch"], s["best"], s["last"]) for s in entry["seeds"].values()] == [
        (1, 1.0, 0.9), (2, 0.5, 0.5)]
    assert entry["seeds"][0]["drop"] == pytest.approx(0.1) and entry["seeds"][2]["drop"] == 0.0
    assert data["overfitting"]["mat"]["seeds"][2]["best_epoch"] == 1
    assert data["overfitting"]["mat"]["seeds"][2]["best"] == pytest.approx(0.3)
    text = markdown(json.loads(json.dumps(data)))  # from the JSON, as comparison.md is
    section = text[text.index("### Robust overfitting"):].splitlines()
    row = next(line for line in section if line.startswith("| at | "))
    assert row.split(" | ")[1:5] == ["1/2, 2/2", "75.00 ± 35.36", "70.00 ± 28.28", "5.00 ± 7.07"]


def test_the_status_estimates_what_can_start_from_finished_tasks_like_it(finished_study, tmp_path):
    """An evaluation and a run undone in a copy of the finished study, with made-up records:
    --status gives each the median CPU time of the finished tasks of its family (kind and
    variant), less what an interrupted one already spent; the tasks waiting on them get the
    same median per family, whatever grid point they will be of; each variant's grid choice
    or progress; then the totals."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    chosen = json.loads((out / "comparison.json").read_text())["selection"]
    shutil.rmtree(out / "evals" / "at" / chosen["at"]["label"] / "seed2")
    (out / "runs" / "mat" / "lr0.02" / "seed0" / "results.json").unlink()  # as if cut short
    tasks = out / "tasks"
    for path in tasks.glob("*.record.json"):
        path.write_text(json.dumps({"status": "done", "cpu_s": 60.0, "wall_s": 60.0}))
    made_up = {"eval__at__seed0": ("done", 600), "eval__at__seed2": ("done", 9999),  # its own
               "eval__at__seed5": ("done", 3000), "eval__at__seed6": ("done", 700),  # median 700
               f"train__mat__{chosen['mat']['label']}__seed2": ("done", 1800),  # not finished now
               "train__mat__lr0.05__seed0": ("done", 1200),
               "train__mat__lr0.02__seed0": ("interrupted", 300)}
    for slug, (status, cpu) in made_up.items():
        (tasks / f"{slug}.record.json").write_text(json.dumps({"status": status, "cpu_s": cpu}))
    (tasks / "eval__mat__seed9.record.json").write_text("null")  # a hand edit: ignored
    lines = progress.status_lines(Study(load_plan(plan), out))
    assert lines[0].split() == "ready train/mat/lr0.02/seed0 about 15 CPU-min (the median of 1 "\
                               "finished like it); 5 CPU-min already spent".split()
    assert lines[1].split() == "ready eval/at/seed2 about 12 CPU-min (the median of 3 finished "\
                               "like it)".split()
    # Until mat's grid has chosen: its second seed's run, and both seeds' evaluations. Their
    # old records do not count (of tasks not finished now), the second seed's run of any
    # grid point included.
    ready, waiting = sections.tasks(Study(load_plan(plan), out))
    assert sorted(waiting) == ["eval/mat/seed0", "eval/mat/seed2", "train/mat/(chosen)/seed2"]
    assert lines[2].split() == "waiting 1 × train/mat about 20 CPU-min each (the median of 1 "\
                               "finished like them)".split()
    assert lines[3].split() == "waiting 2 × eval/mat no finished task like them to go by".split()
    undone = {"eval__at__seed2", "train__mat__lr0.02__seed0", "eval__mat__seed0", "eval__mat__seed2",
              f"train__mat__{chosen['mat']['label']}__seed2"}
    others = [p for p in tasks.glob("*.record.json")
              if p.name.removesuffix(".record.json") not in undone | set(made_up)
              and p.name != "eval__mat__seed9.record.json"]
    finished_cpu = 600 + 3000 + 700 + 1200 + 60 * len(others)
    # Each variant's grid: at's choice with its validation score, mat's runs so far.
    at_score = 100 * chosen["at"]["scores"][chosen["at"]["label"]]
    # (a two-point grid's best is at its edge: the grid does not bracket it; the tiny models
    # score near chance on 64 images, so their two rates may tie, and the line says so)
    tied = [k for k, v in chosen["at"]["scores"].items()
            if k != chosen["at"]["label"] and v == chosen["at"]["scores"][chosen["at"]["label"]]]
    tie = f"; tied for the highest score with {', '.join(tied)}" if tied else ""
    assert lines[4].split() == (f"grid at chose {chosen['at']['label']} (validation "
                                f"{at_score:.1f} %; at the edge of the grid{tie})").split()
    mat_score = 100 * chosen["mat"]["scores"]["lr0.05"]  # the run that ended; lr0.02 is cut short
    assert lines[5].split() == (f"grid mat 1 of 2 grid runs ended (validation: lr0.05 "
                                f"{mat_score:.1f} %)").split()
    assert lines[6] == f"finished {len(others) + 4} tasks, {finished_cpu / 3600:.1f} CPU-h"
    assert lines[7] == ("2 ready, 3 waiting on them; the ready ones: about 27 CPU-min; the waiting "
                        "ones: about 20 CPU-min (2 of them not estimated)")
    # Nothing like them finished: not estimated, rather than "about 0".
    for path in tasks.glob("*.record.json"):
        path.unlink()
    assert progress.status_lines(Study(load_plan(plan), out))[-1] == (
        "2 ready, 3 waiting on them; the ready ones: not estimated; the waiting ones: not estimated")
    for key, expected in (("train/mat-a0.6/lr0.2/seed10-init11", "train/mat-a0.6"),
                          ("eval/control/seed20", "eval/control"),
                          ("table/table2/mat/seed0", "table/table2/mat"), ("transfer/seed10", "transfer")):
        assert progress.family(key) == expected


def test_the_status_says_which_tasks_run_now(finished_study, tmp_path):
    """Two runs undone in a copy of the finished study: the one whose record its worker wrote
    "running" a moment ago is listed first as running; one whose "running" is an hour old
    (its scheduler was killed; it resumes at the next start) is only ready."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    for lr in ("0.02", "0.05"):
        (out / "runs" / "mat" / f"lr{lr}" / "seed0" / "results.json").unlink()
    now = time.time()
    for lr, ended in (("0.02", now - 3600), ("0.05", now - 5)):
        (out / "tasks" / f"train__mat__lr{lr}__seed0.record.json").write_text(
            json.dumps({"status": "running", "cpu_s": 30.0, "ended": ended}))
    lines = progress.status_lines(Study(load_plan(plan), out))
    assert lines[0].startswith("running  train/mat/lr0.05/seed0  ")
    assert lines[1].startswith("ready    train/mat/lr0.02/seed0  ")
    assert lines[-1].startswith("2 ready (1 running now), ")
    (out / "tasks" / "train__mat__lr0.05__seed0.record.json").write_text(
        json.dumps({"status": "interrupted", "cpu_s": 30.0, "ended": now}))
    lines = progress.status_lines(Study(load_plan(plan), out))
    assert not any(line.startswith("running") for line in lines)
    assert lines[-1].startswith("2 ready, ")
    for ended in (now + 3600, "yesterday", None):  # a clock set back, a hand edit: not running
        (out / "tasks" / "train__mat__lr0.05__seed0.record.json").write_text(
            json.dumps({"status": "running", "cpu_s": 30.0, "ended": ended}))
        assert progress.status_lines(Study(load_plan(plan), out))[-1].startswith("2 ready, ")


def test_the_status_estimates_a_new_variant_from_one_of_the_same_method_and_networks(
        finished_study, tmp_path):
    """A variant added to a finished study has no finished training or evaluation of its
    own: --status estimates its runs from the variant that trains the same method on the
    same networks (mat), not from one that does not (at), its evaluations from the variant
    whose evaluations test as many networks of that architecture, alone and in an ensemble
    (mat again; at for one judged by one member alone), and says so."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    text = plan.read_text().replace(
        "  mat: {method.name: mat,",
        "  mat-b: {method.name: mat, models: [tinycnn, tinycnn], method.params.alpha: 0.3}\n"
        "  mat-h1: {method.name: mat, models: [tinycnn, tinycnn], select_on: [h1]}\n"
        "  trades: {method.name: trades}\n"
        "  mat: {method.name: mat,")
    lines = progress.status_lines(Study(load_plan(_write_plan(tmp_path / "plan", text)), out))
    # Ready to start in this order: trades, like nothing finished, counts as the longest;
    # mat-b's and mat-h1's runs, estimated from mat's, then keep the plan's order.
    started = [line.split()[1].split("/")[1] for line in lines if line.startswith("ready")]
    assert started == ["trades"] * 2 + ["mat-b"] * 2 + ["mat-h1"] * 2, lines
    mat = [json.loads(p.read_text())["cpu_s"] for p in (out / "tasks").glob("train__mat__*.record.json")]
    new = [line for line in lines if line.split()[1].startswith("train/mat-b/")]
    assert new and all(line.endswith(f"about {progress._amount(statistics.median(mat))} (as "
                                     "train/mat: the same method and networks)") for line in new)
    assert "(2 of them not estimated)" in lines[-1].split("the ready ones")[1].split(";")[0]  # trades
    evals = [json.loads(p.read_text())["cpu_s"] for p in (out / "tasks").glob("eval__mat__*.record.json")]
    [waiting] = [line for line in lines if line.split()[:3] == ["waiting", "2", "×"]
                 and line.split()[3] == "eval/mat-b"]
    assert waiting.endswith(f"about {progress._amount(statistics.median(evals))} each (as "
                            "eval/mat: the same networks evaluated)"), waiting
    # Judged by h1 alone, mat-h1's evaluations test one network and no ensemble: not mat's
    # work but at's (one tinycnn), so estimated from at's; its training is mat's.
    at = [json.loads(p.read_text())["cpu_s"] for p in (out / "tasks").glob("eval__at__*.record.json")]
    [alone] = [line for line in lines if line.split()[:4] == ["waiting", "2", "×", "eval/mat-h1"]]
    assert alone.endswith(f"about {progress._amount(statistics.median(at))} each (as eval/at: "
                          "as many networks of one architecture evaluated)"), alone
    assert [line for line in lines if line.split()[1].startswith("train/mat-h1/")
            and line.endswith("(as train/mat: the same method and networks)")]


def test_the_report_lists_the_evaluators_warnings_on_reported_models(finished_study, tmp_path):
    """A warning written into one reported evaluation (the control's, seed 2) and into an
    evaluation of a grid point not chosen: the report lists the first under its tables, with
    those the tiny models raised themselves, not the second; with every warning cleared there
    is no such list."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    study = Study(load_plan(plan), out)
    before = report.collect(study)["warnings"]
    chosen = study.selection("at").chosen
    warned = study.eval_dir("control", chosen, 2, "last") / "summary.json"
    summary = json.loads(warned.read_text())
    summary["warnings"] = ["ensemble: FGSM broke 3 examples where PGD failed"]
    warned.write_text(json.dumps(summary))
    other = [p for p in (out / "runs" / "at").iterdir() if p.name != setting_label(chosen)][0]
    stray = out / "evals" / "at" / other.name / "seed0" / "last"
    shutil.copytree(study.eval_dir("at", chosen, 0, "last"), stray)
    summary = json.loads((stray / "summary.json").read_text())
    summary["warnings"] = ["model: not a reported model"]
    (stray / "summary.json").write_text(json.dumps(summary))
    data = report.collect(study)
    assert data["warnings"] == {**before, "control, seed 2, last": [
        "ensemble: FGSM broke 3 examples where PGD failed"]}
    text = markdown(json.loads(json.dumps(data)))
    assert ("### Evaluator warnings\n\nThe evaluator's gradient-masking and point checks warned "
            "on these evaluations of reported models (an accuracy so flagged may overstate "
            "robustness):\n\n") in text
    assert "- control, seed 2, last: ensemble: FGSM broke 3 examples where PGD failed\n" in text
    assert all(f"- {where}: {w}\n" in text for where, ws in before.items() for w in ws)
    assert "not a reported model" not in text
    for path in out.glob("evals/**/summary.json"):
        summary = json.loads(path.read_text())
        summary["warnings"] = []
        path.write_text(json.dumps(summary))
    data = report.collect(study)
    assert data["warnings"] == {} and "### Evaluator warnings" not in markdown(data)


def test_runs_the_plan_no_longer_asks_for_are_listed_as_such(finished_study, tmp_path):
    """A grid narrowed, or a seed dropped, after the runs finished (a reading must explain
    it): the dropped runs stay in the folder and in the cost, and the runs table says the
    plan no longer asks for them, never that they are chosen."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    chosen = Study(load_plan(plan), out).selection("at")
    narrowed = _write_plan(tmp_path / "narrowed", TINY_PLAN.replace(
        "seeds: [0, 2]", f"grids:\n  at: {{lr: [{chosen.chosen['lr']}]}}\nseeds: [0, 2]"))
    study = Study(load_plan(narrowed), out)
    assert sections.tasks(study) == ([], [])  # nothing to run again
    data = report.collect(study)
    dropped = [r for r in data["runs"] if not r["in_plan"]]
    assert [(r["variant"], r["run"]) for r in dropped] == [("at", "seed0")]
    assert dropped[0]["setting"] != chosen.label and not dropped[0]["chosen"]
    text = markdown(json.loads(json.dumps(data)))
    assert f"| at | {dropped[0]['setting']} | seed0 | not in the plan | " in text
    assert sum("not in the plan" in line for line in text.splitlines()) == 1
    assert ("1 run the plan no longer asks for (a grid point, seed, variant or control member it "
            "has dropped) stays in the study's folder, listed and counted here, never chosen. "
            "Training CPU time") in text
    assert "no longer asks" not in markdown(json.loads((finished / "comparison.json").read_text()))
    # One seed fewer: every run of seed 2 (the control's extra members too) is not the plan's.
    one_seed = _write_plan(tmp_path / "one-seed", TINY_PLAN.replace("seeds: [0, 2]", "seeds: [0]"))
    data = report.collect(Study(load_plan(one_seed), out))
    dropped = {(r["variant"], r["run"]) for r in data["runs"] if not r["in_plan"]}
    assert dropped == {(r["variant"], r["run"]) for r in data["runs"] if r["run"].startswith("seed2")}
    assert ("at", "seed2") in dropped and ("mat", "seed2") in dropped
    assert any(run.startswith("seed2-init") for _, run in dropped)
    assert not any(r["chosen"] for r in data["runs"] if not r["in_plan"])
    assert any(r["chosen"] and r["run"].startswith("seed0-init") for r in data["runs"])


def _choices_leading(plan: Path, finished: Path, out: Path) -> dict[str, str]:
    """The finished study copied to ``out``, each grid's chosen point made to lead by far
    (last validation scores 0.75 against 0.25); returns each variant's chosen label."""
    shutil.copytree(finished, out)
    study = Study(load_plan(plan), out)
    choices = {v: study.selection(v).label for v in study.plan.variants}
    for variant in choices:
        for run in (out / "runs" / variant).glob("*/seed0"):
            set_last_validation_score(run, 0.75 if run.parent.name == choices[variant] else 0.25)
    return choices


def test_the_report_says_how_the_one_se_rule_chose(finished_study, tmp_path):
    """The finished tiny study under the same plan with the rule declared, its grid's chosen
    points leading by far (made-up last scores): the choices stand, and the hyperparameter
    table and the settings say the rule made them and with what standard error."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    choices = _choices_leading(plan, finished, out)
    ruled = _write_plan(tmp_path / "ruled", TINY_PLAN.replace(
        "seeds: [0, 2]", "within_one_se: {lr: lowest}\nseeds: [0, 2]"))
    study = Study(load_plan(ruled), out)
    assert {v: study.selection(v).label for v in choices} == choices
    assert sections.tasks(study) == ([], [])  # nothing to run again
    text = markdown(json.loads(json.dumps(report.collect(study))))
    se = 100 * (0.75 * 0.25 / 64) ** 0.5  # the tiny plan's 64 validation images: 5.4 points
    for variant, label in choices.items():  # a grid of two rates: either is at its edge
        rows = [line for line in text.splitlines() if line.startswith(f"| {variant} | ")
                and "one-SE rule" in line]
        assert len(rows) == 1 and rows[0].endswith(
            f"| {label} (at the edge of the grid; one-SE rule, SE {se:.1f} points: "
            "the highest score) |"), rows
    assert ("; chosen by the one-standard-error rule: among the grid points within one binomial "
            "standard error of the best score, the lowest lr.") in text
    settings = provenance.plan_settings(study.plan)["selection"]
    assert settings.endswith("; within one standard error of the best, the lowest lr"), settings


def test_the_report_names_the_points_a_grown_grid_added(finished_study, tmp_path):
    """The finished tiny study under the same plan with ``extend_grid: {lr: 1}``, each grid's
    chosen point leading by far (made-up last scores), so at an edge of its two rates: each
    grid gains the next rate beyond it, trained at seed 0; scoring below the choice, the
    choices stand, and the report names the added points, lists their runs as the plan's and
    says the plan's rule in its settings and comparison.json."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    choices = _choices_leading(plan, finished, out)
    grown = _write_plan(tmp_path / "grown", TINY_PLAN.replace(
        "seeds: [0, 2]", "extend_grid: {lr: 1}\nseeds: [0, 2]"))
    study = Study(load_plan(grown), out)
    ready, waiting = sections.tasks(study)
    assert sorted(t.key.split("/")[1] for t in ready) == ["at", "mat"]
    assert all(t.priority == (0, 0) and t.key.endswith("/seed0") for t in ready)
    assert "up to 0" not in progress.status_lines(study)[-1]
    for task in ready:
        run_train(task.spec)
        set_last_validation_score(Path(task.spec["run_dir"]), 0.5)
    added = {t.key.split("/")[1]: t.key.split("/")[2] for t in ready}
    assert {v: study.selection(v).label for v in choices} == choices
    assert sections.tasks(study) == ([], [])  # the choices stand: nothing else to run again
    data = report.collect(study)
    assert data["plan"]["extend_grid"] == {"lr": 1}
    assert all(len(data["plan"]["grids"][v]["lr"]) == 3 for v in choices)
    text = markdown(json.loads(json.dumps(data)))
    for variant, label in choices.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| {variant} | ")
                and "grid extended by" in line]
        assert len(rows) == 1 and rows[0].endswith(
            f"| {label} (grid extended by {added[variant]}) |"), rows
        run = [r for r in data["runs"] if r["variant"] == variant and r["setting"] == added[variant]]
        assert len(run) == 1 and run[0]["in_plan"] and not run[0]["chosen"]
    assert "the grid grows while its highest score, not tied, is at its edge: lr by the ratio" in text
    settings = provenance.plan_settings(study.plan)["selection"]
    assert settings.endswith("; a grid whose best, not tied, is at its edge gains up to 1 lr value"), settings


def test_an_evaluation_is_estimated_from_one_of_as_many_networks_alone_and_ensembled(tmp_path):
    """Evaluating the first member alone (eval.members: first), a cohort of three and one of
    two differ in their ensembles, so neither is estimated from the other; a cohort judged
    by one member alone evaluates what a single-network variant does."""
    text = TINY_PLAN.replace("members: all", "members: first").replace(
        "seeds: [0, 2]", "seeds: [0, 10]").replace(
        "  mat: {method.name: mat,",
        "  mat3: {method.name: mat, models: [tinycnn, tinycnn, tinycnn]}\n"
        "  mat-h1: {method.name: mat, models: [tinycnn, tinycnn], select_on: [h1]}\n"
        "  mat: {method.name: mat,")
    study = Study(load_plan(_write_plan(tmp_path / "plan", text)), tmp_path / "out")
    kin = progress._kin(study, {"eval/mat": [100.0], "eval/at": [50.0]},
                        ["eval/mat3/seed0", "eval/mat-h1/seed0"])
    assert kin == {"eval/mat-h1": ("eval/at", "as many networks of one architecture evaluated")}


def test_tasks_start_seed_by_seed_then_phase_then_longest_first():
    """Of the tasks that can start, an earlier seed or phase goes first whatever its length;
    within one, an interrupted one that resumes (what it spent is not banked until it ends),
    then the longest by the median of finished tasks of its family, one with nothing like it
    finished before any estimated one, and ties in the plan's order; so the last to start
    on K cores is a short one."""
    def task(key: str, priority: tuple[int, int]) -> Task:
        return Task(key, "eval", {}, priority)

    ready = [task("table/t2/at/seed10", (1, 4)), task("table/t2/trades/seed10", (1, 4)),
             task("table/t2/mat/seed10", (1, 4)), task("table/t2/mart/seed10", (1, 4)),
             task("table/t3/at/seed10", (1, 4)), task("eval/at/seed10", (1, 3)),
             task("table/t2/ard/seed10", (1, 4)), task("table/t2/act/seed0", (0, 4))]
    records = {"table__t2__at__seed0": {"status": "done", "cpu_s": 100.0},
               "table__t2__trades__seed0": {"status": "done", "cpu_s": 100.0},
               "table__t2__mat__seed0": {"status": "done", "cpu_s": 300.0},
               "table__t2__mart__seed0": {"status": "done", "cpu_s": 500.0},
               "table__t2__mart__seed10": {"status": "interrupted", "cpu_s": 450.0},  # resumes first
               "table__t2__ard__seed0": {"status": "done", "cpu_s": 200.0},
               "table__t2__ard__seed5": {"status": "done", "cpu_s": 9000.0},  # undone now:
               "table__t2__act__seed0": {"status": "done", "cpu_s": 1.0},     # not counted
               "eval__at__seed0": {"status": "done", "cpu_s": 1.0}}
    ordered = progress.longest_first(ready, ["table/t2/ard/seed5"], records)
    assert [t.key for t in ordered] == [
        "table/t2/act/seed0", "eval/at/seed10", "table/t2/mart/seed10", "table/t3/at/seed10",
        "table/t2/mat/seed10", "table/t2/ard/seed10", "table/t2/at/seed10",
        "table/t2/trades/seed10"]
    # A teacher's training counts with that of the longest student waiting on it, of its seed.
    ready = [Task("train/mat/lr0.1/seed10", "train", {}, (1, 1)),
             Task("train/at/lr0.1/seed10", "train", {}, (1, 1)),
             Task("train/nat/lr0.05/seed10", "train", {}, (1, 1))]
    records = {f"train__{variant}__lr0.1__seed0": {"status": "done", "cpu_s": cpu}
               for variant, cpu in (("mat", 500.0), ("at", 240.0), ("ard", 300.0),
                                    ("offline", 200.0), ("nat", 100.0), ("nat-student", 100.0))}
    waiting = ["train/ard/lr0.01/seed10", "train/offline/lr0.1/seed10",
               "train/nat-student/lr0.1/seed10", "train/ard/lr0.01/seed20"]
    teachers = {"ard": "at", "offline": "at", "nat-student": "nat"}
    ordered = progress.longest_first(ready, waiting, records, teachers)
    assert [t.key for t in ordered] == ["train/at/lr0.1/seed10", "train/mat/lr0.1/seed10",
                                        "train/nat/lr0.05/seed10"]  # 240 + 300 > 500 > 100 + 100


def test_a_finished_task_run_again_gets_a_record_of_its_own(tmp_path):
    """Its result moved away, a finished task runs again: its record is this run's, the
    finished one kept under "earlier", and the study's cost counts both."""
    path = tmp_path / "tasks" / "eval__at__seed0.record.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"status": "done", "cpu_s": 500.0, "wall_s": 900.0,
                                "invocations": 2, "started": 1.0, "ended": 2.0}))
    record = Record(path)
    record.close("interrupted")
    again = json.loads(path.read_text())
    assert again["invocations"] == 1 and again["cpu_s"] < 100 and again["status"] == "interrupted"
    assert again["earlier"] == [{"status": "done", "cpu_s": 500.0, "wall_s": 900.0,
                                 "invocations": 2, "started": 1.0, "ended": 2.0}]
    Record(path).close("done")
    resumed = json.loads(path.read_text())
    assert resumed["invocations"] == 2 and len(resumed["earlier"]) == 1  # the interrupted run goes on

    class _Study:
        out = tmp_path

    total = report.cost(_Study())
    assert total["eval"]["cpu_s"] == pytest.approx(500.0 + resumed["cpu_s"])
    assert (total["eval"]["tasks"], total["eval"]["again"]) == (1, 1)  # one task, run twice
    assert total["span_s"] == pytest.approx(resumed["ended"] - 1.0)


def test_an_unfinished_task_whose_spec_changed_gets_a_record_of_its_own(tmp_path):
    """An evaluation interrupted under one suite, started again under another: its record
    starts over (the interrupted one under "earlier", still counted in the study's cost),
    and --status's "already spent" counts only what the current version spent; a resumed
    task of the same spec, and a record from before specs were kept, add up as before."""
    path = tmp_path / "tasks" / "eval__at__seed0.record.json"
    path.parent.mkdir()
    old, new = {"suite": "table5-fmnist-cpu"}, {"suite": "table5-aa-fmnist-cpu"}
    Record(path, spec=old).close("interrupted")
    first = json.loads(path.read_text())
    assert first["spec"] == spec_digest(old) and first["invocations"] == 1
    Record(path, spec=old).close("interrupted")
    assert json.loads(path.read_text())["invocations"] == 2 and "earlier" not in json.loads(path.read_text())
    task = Task("eval/at/seed0", "eval", new, (0, 3))
    records = {"eval__at__seed0": json.loads(path.read_text())}
    assert progress._spent(records, task) == 0.0
    assert progress._spent(records, Task("eval/at/seed0", "eval", old, (0, 3))) == records[
        "eval__at__seed0"]["cpu_s"]
    Record(path, spec=new).close("interrupted")
    again = json.loads(path.read_text())
    assert again["invocations"] == 1 and again["spec"] == spec_digest(new)
    assert [e["invocations"] for e in again["earlier"]] == [2]
    path.write_text(json.dumps({"status": "interrupted", "cpu_s": 60.0, "wall_s": 60.0,
                                "invocations": 1, "started": 1.0, "ended": 2.0}))  # no spec kept
    Record(path, spec=new).close("interrupted")
    assert json.loads(path.read_text())["invocations"] == 2


def test_a_task_record_keeps_each_machine_it_ran_on(tmp_path):
    """A task resumed on another machine adds that machine; resumed on the same one, nothing.
    The machine comes from the task's own device, with the process's torch threads."""
    from mutualat.compare.worker import machine

    path = tmp_path / "train__at__lr0.1__seed0.record.json"
    here = machine({"kind": "train", "spec": {"config": {"device": "cpu"}}})
    assert here["device"] == "cpu" and here["threads"] == torch.get_num_threads() and here["cpu_count"]
    assert machine({"kind": "eval", "spec": {"device": "no-such-device"}}) is None
    elsewhere = {**here, "cpu": "Elsewhere 9000", "threads": 8}
    for where in (here, here, elsewhere, here):
        Record(path, where).close("interrupted")
    record = json.loads(path.read_text())
    assert record["invocations"] == 4 and record["machines"] == [here, elsewhere]


def test_the_killed_study_reused_what_had_finished(finished_study):
    _, _, facts = finished_study
    for path, mtime in facts["finished_before"].items():
        assert Path(path).stat().st_mtime_ns == mtime, path


def test_the_table_equals_its_json(finished_study):
    _, out, _ = finished_study
    data = json.loads((out / "comparison.json").read_text())
    text = (out / "comparison.md").read_text()
    assert markdown(data) in text
    for row in data["rows"]:
        section = text.split("### Models of the " + ("last epoch" if row["checkpoint"] == "last"
                                                     else "best epoch"))[1]
        line = next(l for l in section.splitlines() if l.startswith(f"| {row['row']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        ms = row["mean_std"]
        expected = [ms["clean"], *(ms[a] for a in data["attacks"]), ms["r_worst"]]
        for cell, (mean, std) in zip(cells[1:], expected):
            assert cell == f"{100 * mean:.2f} ± {100 * std:.2f}"
        # mean ± std recomputed from the per-seed numbers
        seeds = list(row["seeds"].values())
        assert ms["r_worst"][0] == pytest.approx(np.mean([s["r_worst"] for s in seeds]))
        if not row["baseline"]:
            diff = row["paired"]["r_worst"]
            assert cells[-1].startswith(f"{100 * diff['mean']:+.2f} [")


def test_a_rerun_reuses_everything_and_writes_the_same_report(finished_study, tmp_path):
    plan, out, _ = finished_study
    before = (out / "comparison.md").read_text()
    document = tmp_path / "docs" / "RESULTS.md"
    document.parent.mkdir()
    document.write_text("# Results\n\nkept as it is\n")
    texts = []
    for _ in range(2):
        again = _compare(plan, out, "--write", str(document))
        output, _ = again.communicate(timeout=300)
        assert again.returncode == 0, output
        assert "start " not in output
        assert (out / "comparison.md").read_text() == before
        texts.append(document.read_text())
    assert texts[0] == texts[1]  # byte-identical section from the reused runs
    text = texts[0]
    assert text.startswith("# Results\n\nkept as it is\n")
    assert "<!-- compare:tiny:begin -->" in text and "<!-- compare:tiny:end -->" in text
    assert "Regenerate with `mutualat compare " in text and "CPU-hours of training" in text
    assert (document.parent / "figures" / "tiny-curves.png").is_file()
    data = json.loads((out / "comparison.json").read_text())
    assert markdown(data).split("\n", 1)[1] in text


def test_the_sections_cost_counts_a_task_that_ran_again_once_and_its_earlier_run_apart(
        finished_study, tmp_path):
    """A run trained twice is one run of the runs table, and its first training is named
    beside the count (its CPU time is in the hours): the count matches the table."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    study = Study(load_plan(plan), out)
    runs = len(list((out / "tasks").glob("train__*.record.json")))
    line = next(l for l in report.document_section(study, "cmd").splitlines() if "Cost:" in l)
    assert f"of training in {runs} runs, " in line and "earlier run" not in line
    path = next((out / "tasks").glob("train__*.record.json"))
    record = json.loads(path.read_text())
    record["earlier"] = [{**record, "cpu_s": 3600.0 * 5}]
    path.write_text(json.dumps(record))
    line = next(l for l in report.document_section(study, "cmd").splitlines() if "Cost:" in l)
    assert f"of training in {runs} runs (and 1 earlier run of tasks that ran again), " in line
    assert "5." in line.split("CPU-hours of training")[0]  # its first run's hours are counted


def test_an_evaluation_stopped_before_its_record_runs_again_only_on_the_same_weights(
        finished_study, tmp_path):
    """An evaluation task killed after its summary but before it recorded which model files
    it evaluated (evaluated-models.json) is not finished: the rerun evaluates again, reusing
    every attack's column since the weights are those of the folder's manifest, and writes
    the record. With a run's weights swapped meanwhile, the evaluator refuses the folder
    instead of reporting numbers of other weights."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    study = Study(load_plan(plan), out)
    chosen = study.selection("mat").chosen
    folder = study.eval_dir("mat", chosen, 0, "last")
    record = folder / "evaluated-models.json"
    kept, summary = record.read_text(), (folder / "summary.json").read_text()
    record.unlink()
    again = _compare(plan, out)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert [l.split()[1] for l in output.splitlines() if l.startswith("start")] == [
        "eval/mat/seed0"], output
    assert record.read_text() == kept
    def numbers(text: str) -> dict:  # not the model files' paths (the folder was copied)
        return {name: {k: v for k, v in model.items() if k != "info"}
                for name, model in json.loads(text)["models"].items()}
    assert numbers((folder / "summary.json").read_text()) == numbers(summary)

    record.unlink()
    summary = (folder / "summary.json").read_text()
    run = study.run_dir("mat", chosen, 0) / "models"
    h1, h2 = run / "h1.safetensors", run / "h2.safetensors"
    swapped = h1.read_bytes()
    h1.write_bytes(h2.read_bytes())
    h2.write_bytes(swapped)
    again = _compare(plan, out)
    output, _ = again.communicate(timeout=300)
    assert again.returncode != 0
    log = (out / "logs" / "eval__mat__seed0.log").read_text().rsplit("\n=== ", 1)[1]
    assert "holds another evaluation (it differs in: models)" in log, log
    assert "move this one away" in log
    assert not record.exists() and (folder / "summary.json").read_text() == summary


def test_until_starts_only_what_ends_in_time_and_the_same_command_continues(finished_study, tmp_path):
    """--until: an evaluation to run again whose kind took an hour (its record says so) is
    not started with 10 minutes left: the study stops, says which task and that the same
    command continues, and leaves its report as it was; with two hours left it runs."""
    plan, finished, _ = finished_study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    study = Study(load_plan(plan), out)
    chosen = study.selection("mat").chosen
    shutil.rmtree(study.eval_dir("mat", chosen, 0, "last"))
    like = out / "tasks" / "eval__mat__seed2.record.json"
    record = json.loads(like.read_text())
    like.write_text(json.dumps({**record, "cpu_s": 3000.0, "wall_s": 3600.0}))
    report = (out / "comparison.md").read_text()
    stopped = _compare(plan, out, "--until", "10m")
    output, _ = stopped.communicate(timeout=300)
    assert stopped.returncode == 0, output
    assert "start " not in output
    assert "stopped; 1 task(s) ready would not end by then (eval/mat/seed0)" in output
    assert "stopped at --until 10m with tasks left" in output and "the same command continues" in output
    assert (out / "comparison.md").read_text() == report
    assert not study.eval_dir("mat", chosen, 0, "last").exists()
    again = _compare(plan, out, "--until", "2h")
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert [l.split()[1] for l in output.splitlines() if l.startswith("start")] == ["eval/mat/seed0"]
    assert (study.eval_dir("mat", chosen, 0, "last") / "summary.json").is_file()
    assert "report: " in output


def test_until_reads_lengths_clock_times_and_dates():
    now = datetime.datetime(2026, 12, 3, 1, 30).timestamp()
    assert runner.parse_until("90m", now) == now + 5400
    assert runner.parse_until("2h30m", now) == now + 9000
    assert runner.parse_until("45s", now) == now + 45
    assert runner.parse_until("03:00", now) == now + 5400
    assert runner.parse_until("01:00", now) == now + 23.5 * 3600  # the next 01:00: tomorrow's
    assert runner.parse_until("2026-12-03T04:00", now) == now + 2.5 * 3600
    for bad, says in (("soon", "give a length"), ("", "give a length"), ("25:00", "give a length"),
                      ("2026-12-02T04:00", "has passed already")):
        with pytest.raises(MutualatError, match=says):
            runner.parse_until(bad, now)


def _committed_plans() -> list[Path]:
    configs = Path(__file__).resolve().parents[1] / "configs"
    return sorted(p for folder in ("plans", "paper") for p in (configs / folder).glob("*.yaml")
                  if "variants:" in p.read_text())


@pytest.mark.parametrize("path", _committed_plans(), ids=lambda p: p.stem)
def test_every_committed_plan_loads_and_lists_its_first_tasks(path, tmp_path):
    """Each plan in configs/plans and configs/paper builds every run config, its methods and
    its suites; first come the grids of the variants that learn from no teacher."""
    plan = load_plan(path)
    # A plan below the paper's scale names its full-scale twin (which load_plan loaded) and
    # what it cut; the twins themselves (configs/paper) need none.
    base = plan.config(plan.baseline, plan.settings(plan.baseline)[0], plan.grid_seed)
    at_paper_scale = base.models[0].name in ("resnet18", "wrn34_10") and base.optim.epochs == 120
    assert (plan.paper_scale is None) == at_paper_scale, plan.name
    ready, waiting = sections.tasks(Study(plan, tmp_path / "out"))
    assert len(ready) == sum(len(plan.settings(v)) for v in plan.variants if v not in plan.teachers)
    assert waiting and not (tmp_path / "out").exists()


def test_the_apgd_targets_gap_attacks_only_what_the_suite_left(finished_study, tmp_path, capsys):
    """scripts/apgd_targets_gap.py: a stronger APGD-T on the examples that survived a study's
    suite; its drop is exactly what it broke over n, and its folders are ordinary evaluations."""
    _, out, _ = finished_study
    gap = script_module("apgd_targets_gap")
    assert gap.main([str(out), "--targets", "2", "--out", str(tmp_path / "gap"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    models = {(r["variant"], r["seed"], r["model"]) for r in rows}
    assert {("at", 0, "model"), ("mat", 2, "ensemble"), ("control", 0, "ensemble")} <= models
    assert all(r["checkpoint"] == "last" for r in rows)
    assert any(r["attacked"] for r in rows)  # the stronger attack did run somewhere
    for r in rows:
        assert r["attacked"] == r["surviving"] and not r["estimated"]
        assert 0 <= r["broken"] <= r["attacked"]
        assert r["r_worst_stronger"] == pytest.approx(r["r_worst"] - r["broken"] / r["n"])
        folder = tmp_path / "gap" / r["variant"] / r["setting"] / f"seed{r['seed']}" / "last" / r["model"]
        if r["attacked"]:
            summary = json.loads((folder / "summary.json").read_text())
            assert summary["n_examples"] == r["surviving"]
            assert [a["id"] for a in summary["suite"]["attacks"]] == ["apgd-t2"]
    # A rerun reuses the evaluations and prints the same rows; --limit estimates from a sample.
    assert gap.main([str(out), "--targets", "2", "--out", str(tmp_path / "gap"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    assert gap.main([str(out), "--targets", "2", "--out", str(tmp_path / "gap1"), "--limit", "1",
                     "--variants", "at", "--seeds", "0", "--json"]) == 0
    limited = json.loads(capsys.readouterr().out)
    assert [r["attacked"] for r in limited] == [min(1, r["surviving"]) for r in limited]
    assert gap.main([str(out), "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
    assert gap.main([str(tmp_path), "--json"]) == 2
    assert "no finished evaluation" in capsys.readouterr().err


def assert_same_pairing(got: dict, reported: dict) -> None:
    for key in ("differences", "mean", "low", "high"):
        assert got[key] == pytest.approx(reported[key]), key
    assert got["excludes_zero"] == reported["excludes_zero"]


def test_paired_differences_to_any_row_reproduce_the_reports_own(finished_study, capsys):
    """scripts/paired_differences.py: paired against the plan's baseline it gives exactly the
    report's Δ columns (the same per-seed numbers, the same interval); against the control,
    the report's ensemble-vs-control table."""
    _, out, _ = finished_study
    pairs = script_module("paired_differences")
    data = json.loads((out / "comparison.json").read_text())
    assert pairs.main([str(out), "--against", "at", "--json"]) == 0
    entries = {(e["row"], e["checkpoint"]): e for e in json.loads(capsys.readouterr().out)}
    reported = {(r["row"], r["checkpoint"]): r for r in data["rows"] if not r["baseline"]}
    assert set(entries) == set(reported)
    for key, row in reported.items():
        for column in ("clean", "r_worst"):
            assert_same_pairing(entries[key][column], row["paired"][column])
    ensemble = next(r for r in data["rows"] if r["kind"] == "ensemble")
    assert pairs.main([str(out / "comparison.json"), "--against", "at ×2 ensemble (control)",
                       "--checkpoints", "last", "--json"]) == 0
    entry = next(e for e in json.loads(capsys.readouterr().out) if e["row"] == ensemble["row"])
    assert_same_pairing(entry["r_worst"], ensemble["paired_control"]["r_worst"])
    assert pairs.main([str(out), "--against", "at", "--columns", "r_worst", "pgd-5"]) == 0
    assert "| Δ r_worst | Δ pgd-5 |" in capsys.readouterr().out


def test_paired_differences_by_hand_and_their_errors(tmp_path, capsys):
    pairs = script_module("paired_differences")

    def seeds(*r_worst):
        return {str(s): {"clean": 0.9, "r_worst": v, "attacks": {"pgd": v + 0.01},
                         "threats": {"linf": v + 0.02}}
                for s, v in zip((0, 10, 20), r_worst)}

    rows = [{"row": "at", "checkpoint": "last", "seeds": seeds(0.50, 0.52, 0.51)},
            {"row": "mat (member h1)", "checkpoint": "last", "seeds": seeds(0.52, 0.56, 0.54)},
            {"row": "mat (member h1)", "checkpoint": "best", "seeds": seeds(0.1, 0.1, 0.1)}]
    study = tmp_path / "study"
    study.mkdir()
    (study / "comparison.json").write_text(json.dumps({"rows": rows, "attacks": ["pgd"]}))
    assert pairs.main([str(study), "--against", "at", "--columns", "r_worst", "pgd", "linf",
                       "--json"]) == 0
    captured = capsys.readouterr()
    [entry] = json.loads(captured.out)  # "at" has no best row: nothing to pair there, and it says so
    assert "'at' has no 'best' row" in captured.err
    assert entry["linf"]["mean"] == pytest.approx(0.03) and entry["linf"]["n"] == 3
    # differences 0.02, 0.04, 0.03: mean 0.03, sd 0.01, half-width t(2) = 4.303 x 0.01 / sqrt(3)
    half = 4.303 * 0.01 / 3**0.5
    assert entry["r_worst"]["differences"] == pytest.approx([0.02, 0.04, 0.03])
    assert (entry["r_worst"]["low"], entry["r_worst"]["high"]) == pytest.approx((0.03 - half, 0.03 + half))
    assert entry["r_worst"]["excludes_zero"] and entry["pgd"]["mean"] == pytest.approx(0.03)
    assert pairs.main([str(study), "--against", "at", "--columns", "r_worst"]) == 0
    assert f"| mat (member h1) | last | 3 | +3.00 [{100 * (0.03 - half):+.2f}, " in capsys.readouterr().out
    # A table of the plan: its rows, at its checkpoint, its columns.
    table = {"name": "table3", "checkpoint": "last", "columns": ["clean", "pgd-20", "pgd-1000", "r_worst"],
             "rows": [{"row": row, "seeds": {str(s): {"clean": 0.8, "pgd-20": v + 0.01,
                                                      "pgd-1000": v, "r_worst": v}
                                             for s, v in zip((0, 10), values)}}
                      for row, values in (("at-lc", (0.50, 0.60)), ("mat h1", (0.53, 0.61)))]}
    (study / "comparison.json").write_text(json.dumps({"rows": rows, "attacks": ["pgd"],
                                                       "extras": {"tables": [table]}}))
    assert pairs.main([str(study), "--table", "table3", "--against", "at-lc", "--columns",
                       "pgd-1000", "clean", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert (entry["row"], entry["checkpoint"], entry["seeds"]) == ("mat h1", "last", [0, 10])
    assert entry["pgd-1000"]["differences"] == pytest.approx([0.03, 0.01])
    half = 12.706 * 0.01  # differences 0.03, 0.01: sd 0.0141, standard error 0.01, t(1) = 12.706
    assert (entry["pgd-1000"]["low"], entry["pgd-1000"]["high"]) == pytest.approx((0.02 - half, 0.02 + half))
    assert entry["clean"]["mean"] == 0.0
    assert pairs.main([str(study), "--table", "table3", "--against", "at-lc"]) == 0
    assert capsys.readouterr().out.startswith("Paired differences to `at-lc` in table3 (points;")
    for argv, message in (([str(study), "--table", "table2", "--against", "at-lc"],
                           "no table named 'table2'; the comparison's tables are: table3"),
                          ([str(study), "--table", "table3", "--against", "at-lc", "--columns", "r_avg"],
                           "unknown column 'r_avg'; choose from clean, r_worst, pgd-20, pgd-1000"),
                          ([str(study), "--table", "table3", "--against", "at"],
                           "no row named 'at'; the rows are: at-lc, mat h1"),
                          ([str(study), "--table", "table3", "--against", "at-lc", "--checkpoints", "best"],
                           "table3 evaluates the last checkpoint only"),
                          ([str(study), "--against", "trades"], "no row named 'trades'; the rows are: at, mat"),
                          ([str(study), "--against", "at", "--columns", "fgsm"], "unknown column 'fgsm'"),
                          ([str(study), "--against", "at", "--checkpoints", "best"], "was not evaluated"),
                          ([str(tmp_path), "--against", "at"], "holds no comparison.json")):
        assert pairs.main(argv) == 2
        assert message in capsys.readouterr().err


def test_a_diverged_grid_point_is_never_chosen_and_a_changed_plan_is_refused(tmp_path):
    """A grid point whose loss becomes NaN is marked diverged (the task succeeds) and scores
    -inf; a finished run is reused only while the plan still builds its config."""
    text = (TINY_PLAN.replace("lr: [0.02, 5e-2]", "lr: [0.02, 1e9]")
            .replace("  mat: {method.name: mat, models: [tinycnn, tinycnn], method.params.alpha_warmup: 0.5}\n", "")
            .replace("control: {variant: at, members: 2}\n", "")
            .replace("optim.epochs: 2", "optim.epochs: 1"))
    plan = load_plan(_write_plan(tmp_path / "plan", text))
    study = Study(plan, tmp_path / "out")
    grid = [t for t in study.tasks()[0] if t.priority == (0, 0)]
    assert len(grid) == 2
    for task in grid:
        run_train(task.spec)
    diverged = study.run_dir("at", {"lr": 1e9}, 0)
    assert (diverged / "diverged.json").is_file() and not study.finished(diverged)
    assert "loss became" in json.loads((diverged / "diverged.json").read_text())["error"]
    selection = study.selection("at")
    assert selection.chosen == {"lr": 0.02} and selection.scores["lr1e+09"] == float("-inf")
    assert all(t.priority != (0, 0) for t in study.tasks()[0])  # nothing of the grid reruns
    # The plan is edited after the grid ran: the study refuses to reuse the old runs.
    edited = load_plan(_write_plan(tmp_path / "plan", text.replace("attack.steps: 1", "attack.steps: 2")))
    with pytest.raises(ConfigError, match="another config than the plan's"):
        Study(edited, tmp_path / "out").tasks()


def test_a_task_record_survives_a_kill_up_to_its_last_heartbeat(tmp_path, monkeypatch):
    from mutualat.compare import worker

    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.05)
    path = tmp_path / "task.record.json"
    record = worker.Record(path)
    assert json.loads(path.read_text())["status"] == "running"  # written at the start
    # A heartbeat arrives while the task runs (polled: on loaded cores a beat thread can wait
    # longer than a fixed sleep, which once made this test fail with the beat still due).
    deadline = time.monotonic() + 30
    while True:
        time.sleep(0.05)
        beat = json.loads(path.read_text())  # what a SIGKILL now would leave
        if beat["wall_s"] >= 0.1 or time.monotonic() > deadline:
            break
    assert beat["status"] == "running" and beat["invocations"] == 1 and beat["wall_s"] >= 0.1
    record.close("interrupted")
    first = json.loads(path.read_text())
    assert first["status"] == "interrupted" and first["wall_s"] >= beat["wall_s"]
    again = worker.Record(path)  # a resumed task adds its seconds to the same record
    again.close("done")
    second = json.loads(path.read_text())
    assert second["invocations"] == 2 and second["wall_s"] >= first["wall_s"]
    assert second["started"] == first["started"]
