"""Distributed training on two CPU processes (gloo on 127.0.0.1).

- data-parallel AT and MAT, cohort-parallel MAT and MAT-MP equal the single-process runs of the
  same seeds after four steps (no random start, so the step draws no random numbers;
  madrycnn has no batch-norm, whose per-shard statistics would differ from the full batch's;
  cohort mode keeps tinycnn's batch-norm exact, since every member sees the whole batch);
- a run killed with kill -9 under torchrun stops (no hang), and resumed with
  ``mutualat train --nproc 2 --resume`` ends as the uninterrupted distributed run does
  (random starts on: every process's RNG state is restored);
- a process that stops responding makes the others fail with a clear message after
  ``distributed.timeout_s``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mutualat.config import dump_config, load_config
from mutualat.errors import TrainingError
from mutualat.train import Trainer
from mutualat.train.checkpoint import load_checkpoint
from mutualat.train.logger import run_machines
from mutualat.train.precision import cpu_bf16
from mutualat.train.processes import release_groups

from conftest import tiny_overrides

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")

COMMON = tiny_overrides(1) + ["data.train_subset=256", "data.val_subset=64",
                              "data.test_subset=64", "attack.random_start=false"]
# Data mode: an l2 attack, whose steps follow the gradient continuously. (l-inf PGD steps by
# the gradient's sign, which turns the rounding differences of convolutions over 32 rows
# instead of 64 into a few flipped pixels: after four steps the weights then agree to
# ~1e-5 instead of ~1e-8.)
DATA_AT = COMMON + ["models.0.name=madrycnn", "distributed.mode=data", "attack.norm=l2",
                    "attack.eps=1.0"]
COHORT_MAT = COMMON + ["method.name=mat", "models.1.name=tinycnn", "distributed.mode=cohort"]
# MAT-MP, three members on two processes (rank 0 holds the generalist and the l2
# specialist); no l1 threat, whose step draws a random coordinate count.
COHORT_MAT_MP = COMMON + [
    "method.name=mat-mp", "models.1.name=tinycnn", "models.2.name=tinycnn",
    "method.params.threats=[{norm: linf, eps: 0.1, steps: 2, random_start: false}, "
    "{norm: l2, eps: 1.0, steps: 2, random_start: false}]",
    "distributed.mode=cohort", "eval.test=false",
]
# Data mode with a cohort: every process holds both members, each wrapped in DDP.
DATA_MAT = DATA_AT + ["method.name=mat", "models.1.name=madrycnn", "eval.test=false"]
# Cohort mode with bf16 and channels_last left to the CPU trial (rank 0 times, all follow).
COHORT_TRIAL = [o for o in COHORT_MAT if not o.startswith("deterministic")] + [
    "amp=auto", "channels_last=auto", "eval.test=false"]
# Random starts on, three epochs, a checkpoint every step: the kill-and-resume run.
RESUMABLE = tiny_overrides(3) + [
    "data.train_subset=256", "data.val_subset=64", "eval.test=false", "checkpoint_every=1",
    "method.name=mat", "models.1.name=tinycnn", "distributed.mode=cohort",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)


def _fit_worker(rank: int, port: int, runs: list[tuple[str, list[str]]]) -> None:
    """Several runs in one process group (the trainer uses a group its caller made)."""
    _env(rank, port)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    for out, overrides in runs:
        Trainer(load_config(None, overrides), out).fit()
    dist.destroy_process_group()
    release_groups()


def _hang_worker(rank: int, port: int, out: str, report: str) -> None:
    """Rank 1 stops responding at step 2; rank 0 must fail with a clear message."""
    from mutualat.train import placement

    _env(rank, port)
    if rank == 1:
        original, calls = placement.DataParallel.reduce_step, []

        def hang(self, *args):
            calls.append(1)
            if len(calls) == 2:
                deadline = time.time() + 60
                while not os.path.exists(report) and time.time() < deadline:
                    time.sleep(0.1)
                os._exit(0)
            return original(self, *args)

        placement.DataParallel.reduce_step = hang
    cfg = load_config(None, DATA_AT + ["distributed.timeout_s=3", "attack.steps=1"])
    tick = time.time()
    try:
        Trainer(cfg, out).fit()
    except TrainingError as exc:
        Path(report).write_text(json.dumps({"message": str(exc), "after_s": time.time() - tick}))
        os._exit(0)  # the group is broken: skip its teardown
    raise AssertionError("training went on without rank 1")


def _spawn(fn, *args, deadline_s: float = 240) -> None:
    context = mp.start_processes(fn, args=(_free_port(), *args), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.time() + deadline_s
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the 2-process run did not finish in {deadline_s} s")


def _same_weights(a: Path, b: Path, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    for wa, wb in zip(load_checkpoint(a / "checkpoint.pt")["models"],
                      load_checkpoint(b / "checkpoint.pt")["models"], strict=True):
        assert wa.keys() == wb.keys()
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=rtol, atol=atol, msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Single-process references here, and three 2-process runs in one spawned group."""
    root = tmp_path_factory.mktemp("dist")
    Trainer(load_config(None, DATA_AT), root / "data-single").fit()
    Trainer(load_config(None, COHORT_MAT), root / "cohort-single").fit()
    Trainer(load_config(None, DATA_MAT), root / "data-mat-single").fit()
    Trainer(load_config(None, COHORT_MAT_MP), root / "cohort-mp-single").fit()
    _spawn(_fit_worker, [(str(root / "data-2"), DATA_AT), (str(root / "cohort-2"), COHORT_MAT),
                         (str(root / "data-mat-2"), DATA_MAT),
                         (str(root / "cohort-mp-2"), COHORT_MAT_MP),
                         (str(root / "resumable-2"), RESUMABLE),
                         (str(root / "cohort-trial-2"), COHORT_TRIAL)])
    return root


def test_data_parallel_at_equals_the_single_process_run(runs):
    _same_weights(runs / "data-2", runs / "data-single")
    state = load_checkpoint(runs / "data-2" / "checkpoint.pt")
    assert state["distributed"] == {"mode": "data", "processes": 2}
    assert len(state["rng_ranks"]) == 2
    # The loss is the full batch's: the mean of the two shards' means.
    single, double = (_steps(runs / name) for name in ("data-single", "data-2"))
    assert [r["global_step"] for r in double] == [1, 2, 3, 4]
    for a, b in zip(single, double):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["adv_acc/model"] == pytest.approx(a["adv_acc/model"], abs=1e-6)


def test_data_parallel_mat_equals_the_single_process_run(runs):
    _same_weights(runs / "data-mat-2", runs / "data-mat-single")


def test_cohort_parallel_mat_equals_the_single_process_run(runs):
    _same_weights(runs / "cohort-2", runs / "cohort-single")
    single, double = (_steps(runs / name) for name in ("cohort-single", "cohort-2"))
    for a, b in zip(single, double, strict=True):  # both members' metrics, gathered on rank 0
        assert a.keys() == b.keys()
        for key in ("loss", "kl/h1", "kl/h2", "lc/h2"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    # Rank 0 wrote every member's files, once; validation and test cover both members.
    for name in ("h1.safetensors", "h2.safetensors", "h1.best.safetensors", "h2.best.safetensors"):
        assert (runs / "cohort-2" / "models" / name).is_file(), name
    results = json.loads((runs / "cohort-2" / "results.json").read_text())
    expected = json.loads((runs / "cohort-single" / "results.json").read_text())
    for role in ("h1", "h2"):
        for key in ("clean", "pgd"):
            assert results["models"][role][key] == pytest.approx(expected["models"][role][key], abs=0.02)
    events = [r["event"] for r in _records(runs / "cohort-2")]
    assert events.count("start") == 1 and events.count("epoch") == 1 and events.count("test") == 1
    # Rank 0 writes the log, and its machine record names every process's machine.
    [machine] = [r for r in _records(runs / "cohort-2") if r["event"] == "machine"]
    assert machine["processes"] == 2 and len(machine["ranks"]) == 2
    assert all(rank["threads"] >= 1 and rank["cpu"] for rank in machine["ranks"])
    assert run_machines(runs / "cohort-2") == [
        {k: v for k, v in machine["ranks"][0].items() if k not in ("event", "global_step")}]


def test_cohort_parallel_mat_mp_equals_the_single_process_run(runs):
    _same_weights(runs / "cohort-mp-2", runs / "cohort-mp-single")
    for role in ("generalist", "linf", "l2"):
        assert (runs / "cohort-mp-2" / "models" / f"{role}.safetensors").is_file(), role


def test_the_precision_trial_decides_once_for_every_process(runs):
    speed = next(r for r in _records(runs / "cohort-trial-2") if r["event"] == "speed")
    assert speed["precision_how"] == "trial"
    # bf16 is timed too unless the processor says it has no bf16 instructions
    assert len(speed["precision_trial_s"]) == (2 if cpu_bf16() is False else 4)
    chosen = load_checkpoint(runs / "cohort-trial-2" / "checkpoint.pt")["precision"]
    assert chosen == {"amp": speed["amp"] == "bf16", "channels_last": speed["channels_last"]}
    for name in ("h1.safetensors", "h2.safetensors"):
        assert (runs / "cohort-trial-2" / "models" / name).is_file()


def test_kill_9_under_torchrun_then_resume_with_nproc(runs, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(load_config(None, RESUMABLE)))
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "mutualat", "train", "--config", str(config), "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists():
        assert torchrun.poll() is None, "training exited before its first checkpoint"
        assert time.time() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    rank1 = _worker_pid(torchrun.pid, rank=1)
    os.kill(rank1, signal.SIGKILL)
    try:
        _, stderr = torchrun.communicate(timeout=60)  # it stops: no process waits forever
    except subprocess.TimeoutExpired:
        torchrun.kill()
        raise AssertionError("torchrun still runs 60 s after a worker was killed") from None
    assert torchrun.returncode != 0
    assert "exitcode  : -9" in stderr or "Signal 9" in stderr or "SIGKILL" in stderr, stderr[-2000:]
    assert load_checkpoint(out / "checkpoint.pt")["global_step"] < 12, "killed too late to test resume"

    resumed = subprocess.run(
        [sys.executable, "-m", "mutualat", "train", "--nproc", "2", "--resume", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_weights(out, runs / "resumable-2")
    events = [r["event"] for r in _records(out)]
    assert events.count("start") == 1 and events.count("epoch") == 3


def test_a_process_that_stops_responding_fails_the_run_with_a_clear_message(tmp_path):
    report = tmp_path / "report.json"
    _spawn(_hang_worker, str(tmp_path / "run"), str(report), deadline_s=120)
    result = json.loads(report.read_text())
    assert "process 0 of 2 stopped" in result["message"]
    assert "distributed.timeout_s (3 s)" in result["message"]
    assert "--resume" in result["message"]
    assert result["after_s"] < 60


def test_cohort_mode_refuses_methods_that_need_peer_weights():
    from mutualat.errors import ConfigError
    from mutualat.methods import build_method
    from mutualat.train.placement import CohortParallel, DataParallel
    from mutualat.train.processes import Processes

    two = Processes()
    two.world = 2  # check() reads only the process count
    cfg = load_config(None, tiny_overrides(1) + ["method.name=trades"])
    with pytest.raises(ConfigError, match="distributed.mode=data"):
        CohortParallel(two, 10).check(cfg, build_method(cfg))
    cfg = load_config(None, tiny_overrides(1) + ["data.batch_size=63"])
    with pytest.raises(ConfigError, match="not divisible by the 2 processes"):
        DataParallel(two, 10).check(cfg, build_method(cfg))


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _steps(run: Path) -> list[dict]:
    return [r for r in _records(run) if r["event"] == "step"]


def _worker_pid(parent: int, rank: int, timeout_s: float = 30) -> int:
    """The pid of torchrun's worker process of ``rank`` (found by its environment)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (entry / "environ").read_bytes().split(b"\0") if ppid == parent else []
            except (OSError, ValueError, IndexError):
                continue
            if f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} under torchrun (pid {parent})")
