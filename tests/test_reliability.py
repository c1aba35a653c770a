"""Faults injected into runs, and what the user gets: an exact resume, or a clear error that
names the problem, exits non-zero and changes nothing already written (file hashes compared).

Each test injects one fault: a kill during the first checkpoint write, a NaN before the first
checkpoint, an edited config.yaml, a checkpoint swapped in from another run, a full disk, a
torn or corrupt metrics line, an --out that is a file, an l2/l1 eps wider than the input space.
README.md ("Reliability") points at them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mutualat.cli import main
from mutualat.config import dump_config, load_config
from mutualat.errors import DataError, TrainingError
from mutualat import files
from mutualat.train import Trainer
from mutualat.train.checkpoint import load_checkpoint
from mutualat.train.logger import MetricsLog, read_metrics, run_machines

from conftest import tiny_overrides, train_first_epoch_only


def _hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its SHA-256: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_identical_weights(a: Path, b: Path) -> None:
    """Bit for bit: both runs computed the same thing in this process (one thread)."""
    wa, wb = (load_checkpoint(run / "checkpoint.pt")["models"] for run in (a, b))
    for ma, mb in zip(wa, wb, strict=True):
        assert ma.keys() == mb.keys()
        for key in ma:
            assert torch.equal(ma[key], mb[key]), key


def _train_argv(out: Path, overrides: list[str], *extra: str) -> list[str]:
    argv = ["train", "--out", str(out), *extra]
    for assignment in overrides:
        argv += ["--set", assignment]
    return argv


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """The uninterrupted 2-epoch reference run."""
    out = tmp_path_factory.mktemp("runs") / "full"
    Trainer(load_config(None, tiny_overrides(2)), out).fit()
    return out


# `mutualat train` that dies by SIGKILL once the first checkpoint's temporary file is written
# and synced, just before it would be renamed to checkpoint.pt: the worst instant to die.
_KILLED_IN_FIRST_CHECKPOINT_WRITE = """
import os, signal, sys
from mutualat.cli import main

rename = os.replace

def replace(src, dst):
    if os.path.basename(dst) == "checkpoint.pt":
        os.kill(os.getpid(), signal.SIGKILL)
    rename(src, dst)

os.replace = replace
sys.exit(main(sys.argv[1:]))
"""


# The same, killed as it renames the temporary of the new run's config.yaml into place: the
# folder then holds only its lock and that temporary (a study's scheduler killed as a task
# starts leaves this).
_KILLED_WRITING_ITS_CONFIG = _KILLED_IN_FIRST_CHECKPOINT_WRITE.replace('"checkpoint.pt"', '"config.yaml"')


def test_a_start_killed_while_writing_its_config_does_not_block_a_new_run(full_run, tmp_path,
                                                                          capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_config(load_config(None, tiny_overrides(2))))
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITING_ITS_CONFIG, "train", "--config",
                             str(config), "--out", str(out)], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stale = sorted(p.name for p in out.iterdir() if p.name != ".lock")
    assert len(stale) == 1 and stale[0].startswith(".config.yaml.") and stale[0].endswith(".tmp")
    assert main(["train", "--dry-run", "--config", str(config), "--out", str(out)]) == 0
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"removed 1 temporary file(s) an interrupted start left in {out}: {stale[0]}" in said
    assert not list(out.glob(".*.tmp"))
    _assert_identical_weights(out, full_run)


@pytest.fixture(scope="module")
def dead_start(tmp_path_factory) -> Path:
    """A run folder whose training was killed during its first checkpoint write."""
    root = tmp_path_factory.mktemp("dead")
    config = root / "tiny.yaml"
    config.write_text(dump_config(load_config(None, tiny_overrides(2))))
    out = root / "run"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_FIRST_CHECKPOINT_WRITE, "train", "--config",
         str(config), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "checkpoint.pt").exists()
    assert [p.name for p in out.glob(".checkpoint.pt.*.tmp")], "the kill left no temporary"
    return out


def test_a_kill_during_the_first_checkpoint_write_resumes_from_scratch_bit_identical(
        full_run, dead_start, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(dead_start, out)
    stale = [p.name for p in out.glob(".checkpoint.pt.*.tmp")]
    Trainer(None, out, resume=True).fit()
    said = capsys.readouterr().out
    assert f"removed 1 temporary file(s) an interrupted write left in {out}: {stale[0]}" in said
    assert "has no checkpoint (the run stopped before the end of its first epoch): starting " \
           "it again from scratch" in said
    assert "removed metrics.jsonl, models/model.best.safetensors, models/model.safetensors" in said
    assert not list(out.glob(".*.tmp"))
    _assert_identical_weights(out, full_run)
    events = [r["event"] for r in read_metrics(out)]
    assert events.count("start") == 1 and events.count("epoch") == 2


def test_a_new_run_into_a_dead_start_is_refused_naming_what_is_there(dead_start, capsys):
    before = _hashes(dead_start)
    assert main(_train_argv(dead_start, tiny_overrides(2))) == 2
    err = capsys.readouterr().err
    assert f"run folder {dead_start} holds a run that never reached its first checkpoint" in err
    assert "config.yaml" in err and "metrics.jsonl" in err and "models" in err
    assert "pass --resume to start it again from scratch" in err
    assert _hashes(dead_start) == before


def test_a_nan_before_the_first_checkpoint_does_not_claim_one(tmp_path, monkeypatch):
    from mutualat.methods.at import AT
    from mutualat.methods.base import StepResult

    def nan_loss(self, cohort, x, y):
        return StepResult(cohort[0].module(x).sum() * float("nan"))

    monkeypatch.setattr(AT, "loss", nan_loss)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError) as info:
        Trainer(load_config(None, tiny_overrides(1)), out).fit()
    message = str(info.value)
    assert "loss became nan at epoch 1, step 1" in message
    assert f"no checkpoint was written yet: --resume starts {out} again from scratch" in message
    assert "intact" not in message and not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("key, value, difference", [
    ("attack.eps", 0.3, "attack.eps (0.1 saved, 0.3 given)"),
    ("optim.epochs", 3, "optim.epochs (2 saved, 3 given)"),
])
def test_an_edited_config_yaml_is_refused_and_nothing_changes(full_run, tmp_path, capsys,
                                                              key, value, difference):
    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    edited = load_config(out / "config.yaml", [f"{key}={value}"])
    (out / "config.yaml").write_text(dump_config(edited))
    before = _hashes(out)
    assert main(["train", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint.pt'} was written by another config than" in err
    assert f"they differ in {difference}" in err
    assert _hashes(out) == before


def test_a_checkpoint_from_another_run_is_refused_and_nothing_changes(full_run, tmp_path, capsys):
    other = tmp_path / "other"  # the same config, another run: stopped after its first epoch
    train_first_epoch_only(load_config(None, tiny_overrides(2)), other)

    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    shutil.copyfile(other / "checkpoint.pt", out / "checkpoint.pt")
    before = _hashes(out)
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert f"{out / 'checkpoint.pt'} belongs to another run" in capsys.readouterr().err
    assert _hashes(out) == before  # metrics.jsonl among them: not truncated to step 8


class _FullDisk:
    """The ``os`` module as mutualat.files, which writes every file atomically, sees it on a
    full disk: fsync fails with ENOSPC, for every file or (``only``) for the temporary files
    of the one named so (Linux: the name is read back from the descriptor)."""

    def __init__(self, only: str | None = None):
        self.only = only

    def __getattr__(self, name):
        return getattr(os, name)

    def fsync(self, fd):
        if self.only is None or os.path.basename(
                os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{self.only}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)


@pytest.mark.parametrize("full, first_refused", [
    # the model files of epoch 2 written, then the disk fills
    pytest.param("checkpoint.pt", "checkpoint.pt", id="checkpoint-only", marks=pytest.mark.skipif(
        not os.path.isdir("/proc/self/fd"), reason="reads the file's name from /proc")),
    # full from the first file of epoch 2's end on
    pytest.param(None, "models/model.safetensors", id="every-file"),
])
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
        full_run, tmp_path, monkeypatch, full, first_refused):
    out = tmp_path / "run"
    original = Trainer._end_of_epoch
    first: dict[str, bytes] = {}

    def fill_the_disk_after_epoch_1(self):
        original(self)
        if self.epoch == 1:
            first["checkpoint"] = (out / "checkpoint.pt").read_bytes()
            monkeypatch.setattr(files, "os", _FullDisk(full))

    monkeypatch.setattr(Trainer, "_end_of_epoch", fill_the_disk_after_epoch_1)
    with pytest.raises(TrainingError) as info:
        Trainer(load_config(None, tiny_overrides(2)), out).fit()
    message = str(info.value)  # the failed trainer let go of the folder: resume below works
    assert f"could not write {first_refused} in {out} ({os.strerror(errno.ENOSPC)})" in message
    assert (f"the previous checkpoint ({out / 'checkpoint.pt'}, at the end of epoch 1) is "
            "intact: --resume continues from it once the disk has room") in message
    assert (out / "checkpoint.pt").read_bytes() == first["checkpoint"]
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()  # space again
    Trainer(None, out, resume=True).fit()
    _assert_identical_weights(out, full_run)


def test_a_torn_last_metrics_line_is_skipped_and_a_corrupt_one_named(full_run, tmp_path, capsys,
                                                                    monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines) + '{"event": "step", "global_st')  # killed mid-write
    assert len(read_metrics(run)) == len(lines)
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "training_curves.png").is_file()

    log.write_text("".join(lines[:2]) + '{"event": "st\n' + "".join(lines[2:]))
    assert main(["report", str(run), "--out", str(tmp_path / "report2")]) == 2
    assert f"{log}, line 3, is not a JSON record" in capsys.readouterr().err

    # The trainer's own truncation on resume: the same rules.
    log.write_text("".join(lines) + '{"event": "step", "global_st')
    MetricsLog(run, tensorboard=False).truncate_after(10**9)
    assert log.read_text() == "".join(lines)
    log.write_text("".join(lines[:2]) + '{"event": "st\n' + "".join(lines[2:]))
    with pytest.raises(DataError, match="line 3, is not a JSON record"):
        MetricsLog(run, tensorboard=False).truncate_after(10**9)
    # A full disk (or a kill) while the resume rewrites the log: it keeps every line.
    log.write_text("".join(lines))
    with monkeypatch.context() as patched:
        patched.setattr(files, "os", _FullDisk())
        with pytest.raises(OSError):
            MetricsLog(run, tensorboard=False).truncate_after(0)
    assert log.read_text() == "".join(lines) and not list(run.glob("*.tmp"))


def test_a_resume_that_died_before_its_first_checkpoint_is_not_named_among_the_machines(tmp_path):
    """Two resumes from the checkpoint at step 4: the first, on another machine, died before
    writing a checkpoint, so its work is lost; the second truncates the log to step 4. Only
    the machines whose work the run keeps are named."""
    log = tmp_path / "metrics.jsonl"
    first = {"event": "machine", "global_step": 0, "cpu": "A", "cpu_count": 2, "threads": 1, "torch": "t"}
    records = [first, {"event": "step", "global_step": 4, "loss": 1.0},
               {**first, "global_step": 4, "cpu": "Lost"}, {"event": "step", "global_step": 5, "loss": 0.9}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [m["cpu"] for m in run_machines(tmp_path)] == ["A", "Lost"]
    MetricsLog(tmp_path, tensorboard=False).truncate_after(4)
    assert [json.loads(line) for line in log.read_text().splitlines()] == records[:2]
    assert run_machines(tmp_path) == [{k: v for k, v in first.items() if k not in ("event", "global_step")}]
    # A run logged before machines were recorded: what its start record kept.
    log.write_text(json.dumps({"event": "start", "global_step": 0, "config": {}, "device": "cpu",
                               "torch": "2.0", "host": "h"}) + "\n")
    assert run_machines(tmp_path) == [{"device": "cpu", "torch": "2.0", "host": "h"}]


@pytest.mark.parametrize("resume", [False, True])
def test_an_out_that_is_a_file_is_a_clear_error(tmp_path, capsys, resume):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    argv = _train_argv(notes, [] if resume else tiny_overrides(1), *(["--resume"] if resume else []))
    assert main(argv) == 2
    assert f"--out {notes} is a file, not a folder; choose another --out" in capsys.readouterr().err
    assert notes.read_text() == "my notes\n"


@pytest.mark.parametrize("overrides, message", [
    (["attack.norm=l2", "attack.eps=1000000"],
     "attack.eps=1e+06 is larger than the l2 diameter of the input space (28 for 1x28x28 "
     "images in [0,1])"),
    (["attack.norm=l1", "attack.eps=785"],
     "attack.eps=785 is larger than the l1 diameter of the input space (784 for 1x28x28"),
    (["method.name=mat-mp", "models.1.name=tinycnn", "models.2.name=tinycnn",
      "method.params.threats=[{norm: linf, eps: 0.1}, {norm: l2, eps: 100}]"],
     "method.params.threats.1.eps=100 is larger than the l2 diameter of the input space (28"),
])
def test_an_eps_wider_than_the_input_space_is_refused(tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    assert main(_train_argv(out, tiny_overrides(1) + overrides)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_eps_up_to_the_input_space_diameter_is_accepted(tmp_path):
    cfg = load_config(None, tiny_overrides(1) + ["attack.norm=l2", "attack.eps=28"])
    assert Trainer(cfg, tmp_path / "run").cfg.attack.eps == 28.0


def test_a_filesystem_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    """Some network mounts answer flock with ENOLCK: that is no lock to be had, not a folder in
    use, so the run goes on (with a warning) instead of being refused as busy."""
    import errno
    import fcntl

    from mutualat.files import hold_lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING"):
        assert hold_lock(tmp_path / "run", "in use") is None
    assert "cannot lock" in caplog.text and "No locks available" in caplog.text


def test_a_second_process_cannot_train_into_a_folder_in_use(tmp_path):
    from mutualat.errors import ConfigError

    out = tmp_path / "run"
    first = Trainer(load_config(None, tiny_overrides(1)), out)  # holds the folder's lock
    before = _hashes(out)
    code = subprocess.run([sys.executable, "-m", "mutualat", "train", "--out", str(out), "--resume"],
                          capture_output=True, text=True, timeout=120)
    assert code.returncode == 2
    assert "in use by another training process" in code.stderr
    assert _hashes(out) == before
    with pytest.raises(ConfigError, match="in use by another training process"):
        Trainer(None, out, resume=True)
    first.fit()  # ends, and lets go
    assert subprocess.run([sys.executable, "-m", "mutualat", "train", "--out", str(out), "--resume"],
                          capture_output=True, text=True, timeout=300).returncode == 0
