"""The training loop: artifacts, exact resume (also after kill -9), and refusal to overwrite."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mutualat
from mutualat.config import dump_config, load_config
from mutualat.device import hardware_info
from mutualat.errors import CheckpointError, ConfigError, TrainingError
from mutualat.train import Trainer
from mutualat.train.checkpoint import load_checkpoint
from mutualat.train.logger import run_machines

from conftest import Stopped, tiny_overrides, train_first_epoch_only


def _weights(run: Path) -> list[dict[str, torch.Tensor]]:
    return load_checkpoint(run / "checkpoint.pt")["models"]


def _assert_same_weights(a: Path, b: Path) -> None:
    for wa, wb in zip(_weights(a), _weights(b), strict=True):
        assert wa.keys() == wb.keys()
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """The uninterrupted 2-epoch reference run."""
    out = tmp_path_factory.mktemp("runs") / "full"
    Trainer(load_config(None, tiny_overrides(2)), out).fit()
    return out


def test_run_folder_contents(full_run):
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "results.json",
                 "models/model.safetensors", "models/model.best.safetensors"):
        assert (full_run / name).is_file(), name
    records = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 <= r["val_pgd/model"] <= r["val_clean/model"] + 0.05 for r in epochs)
    model = mutualat.load_model(full_run / "models" / "model.safetensors")
    assert not model.training
    logits = model(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    results = json.loads((full_run / "results.json").read_text())
    assert set(results["models"]["model"]) == {"clean", "pgd"}
    # The saved config is complete: the method's defaults are filled in.
    assert load_config(full_run / "config.yaml").method.params == {"loss": "ce"}


def test_resume_after_interruption_matches_uninterrupted(full_run, tmp_path):
    out = tmp_path / "interrupted"
    train_first_epoch_only(load_config(None, tiny_overrides(2)), out)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    Trainer(None, out, resume=True).fit()
    _assert_same_weights(out, full_run)
    # The log has each epoch once, as the uninterrupted run's does.
    events = [json.loads(l)["event"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("epoch") == 2 and events.count("start") == 1
    # Each stretch of the run recorded where it computed, which the reports read back: here
    # twice the same machine, so one; a stretch moved to another machine names it too.
    assert events.count("machine") == 2
    here = hardware_info(torch.device("cpu"))
    [machine] = run_machines(out)
    assert (machine["cpu"], machine["cpu_count"], machine["threads"], machine["torch"]) == (
        here["cpu"], here["cpu_count"], torch.get_num_threads(), torch.__version__)
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    resumed = max(i for i, r in enumerate(records) if r["event"] == "machine")
    records[resumed]["cpu"] = "Other CPU"  # as if the resume had run elsewhere
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [m["cpu"] for m in run_machines(out)] == [here["cpu"], "Other CPU"]


def test_resume_from_a_mid_epoch_checkpoint(tmp_path, monkeypatch):
    overrides = tiny_overrides(2) + ["checkpoint_every=3"]
    reference = tmp_path / "reference"
    Trainer(load_config(None, overrides), reference).fit()

    out = tmp_path / "mid"
    original = Trainer._checkpoint
    calls = {"n": 0}

    def die_after_second_checkpoint(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 1 step 6 (8 steps an epoch)
            raise Stopped

    monkeypatch.setattr(Trainer, "_checkpoint", die_after_second_checkpoint)
    with pytest.raises(Stopped):
        Trainer(load_config(None, overrides), out).fit()
    monkeypatch.setattr(Trainer, "_checkpoint", original)
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 6)
    Trainer(None, out, resume=True).fit()
    _assert_same_weights(out, reference)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killed_then_resumed_from_the_command_line(full_run, tmp_path, sig):
    """kill -9, or SIGTERM (kill's default; a batch system's or container's stop), which
    stops training as Ctrl-C does: exit status 143 and how to resume."""
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_config(load_config(None, tiny_overrides(2))))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "mutualat", "train", "--config", str(config), "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, "training exited before its first checkpoint"
        assert time.time() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, sig)
    _, said = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, said
        assert said.strip().endswith("terminated; resume with --resume"), said
    else:
        assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1, "killed too late to test resume"
    resumed = subprocess.run(command[:-4] + ["--out", str(out), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(out, full_run)


def test_a_student_moved_with_its_teacher_resumes_but_not_against_another(tmp_path):
    """An ARD run interrupted after its first epoch, moved elsewhere with its teacher's file
    (a study folder moved): resumed with the teacher's new path it ends as the uninterrupted
    run; another model at a path is refused, naming models.0.init, and nothing changes."""
    from mutualat.data import load_dataset

    def ard(teacher: Path):
        return load_config(None, tiny_overrides(2) + [
            "method.name=ard", "models.1.name=tinycnn", "models.0.frozen=true",
            f"models.0.init={teacher}"])

    data = load_dataset("fashion-mnist-embedded")
    first = tmp_path / "first"
    first.mkdir()
    for name in ("teacher", "other"):  # two models of different weights
        model = mutualat.create_model("tinycnn", 10, in_channels=1, input_size=28,
                                      mean=data.mean, std=data.std)
        mutualat.save_model(model, first / f"{name}.safetensors")
    Trainer(ard(first / "teacher.safetensors"), tmp_path / "full").fit()
    train_first_epoch_only(ard(first / "teacher.safetensors"), first / "run")
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    before = {p: p.stat().st_mtime_ns for p in (moved / "run").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="differs from the saved one in models.0.init"):
        Trainer(ard(moved / "other.safetensors"), moved / "run", resume=True)
    assert {p: p.stat().st_mtime_ns for p in (moved / "run").rglob("*") if p.is_file()} == before
    # The teacher's file overwritten in place by another model: refused by content too.
    shutil.copyfile(moved / "teacher.safetensors", tmp_path / "kept.safetensors")
    shutil.copyfile(moved / "other.safetensors", moved / "teacher.safetensors")
    with pytest.raises(ConfigError, match="holds other weights than the run started from"):
        Trainer(ard(moved / "teacher.safetensors"), moved / "run", resume=True)
    shutil.copyfile(tmp_path / "kept.safetensors", moved / "teacher.safetensors")
    Trainer(ard(moved / "teacher.safetensors"), moved / "run", resume=True).fit()
    _assert_same_weights(moved / "run", tmp_path / "full")


def test_a_key_one_config_lacks_is_a_difference_even_inside_a_list():
    """models.0.kwargs {} against {dropout: None}: named, not taken for equal."""
    from mutualat.train.run_dir import config_difference

    saved = load_config(None, tiny_overrides(1))
    given = load_config(None, tiny_overrides(1) + ["models.0.kwargs={dropout: null}"])
    assert config_difference(saved, given).startswith("models.0.kwargs.dropout")


def test_existing_run_folder_is_not_overwritten(full_run):
    before = {p: p.stat().st_mtime_ns for p in full_run.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already exists"):
        Trainer(load_config(None, tiny_overrides(2)), full_run)
    with pytest.raises(ConfigError, match="differs from the saved one in optim.epochs"):
        Trainer(load_config(None, tiny_overrides(3)), full_run, resume=True)
    after = {p: p.stat().st_mtime_ns for p in full_run.rglob("*") if p.is_file()}
    assert before == after


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(ConfigError, match="has no config.yaml"):
        Trainer(None, tmp_path, resume=True)


def test_corrupt_checkpoint_is_named(tmp_path):
    out = tmp_path / "run"
    Trainer(load_config(None, tiny_overrides(1)), out).fit()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint.pt is unreadable or corrupt"):
        Trainer(None, out, resume=True)


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    from mutualat.methods.at import AT
    from mutualat.methods.base import StepResult

    def nan_loss(self, cohort, x, y):
        return StepResult(cohort[0].module(x).sum() * float("nan"))

    monkeypatch.setattr(AT, "loss", nan_loss)
    with pytest.raises(TrainingError, match="loss became nan at epoch 1, step 1"):
        Trainer(load_config(None, tiny_overrides(1)), tmp_path / "nan").fit()


def test_cli_errors_exit_nonzero(tmp_path, capsys):
    from mutualat.cli import main

    assert main(["train", "--out", str(tmp_path / "a"), "--set", "optim.epoch=1"]) == 2
    assert "unknown config key 'optim.epoch'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "b"), "--set", "method.name=nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "c")]) == 2
    assert "needs --config" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    ("models.0.name=nope", "unknown model 'nope'"),
    ("data.name=nope", "unknown dataset 'nope'"),
])
def test_a_run_that_cannot_be_built_leaves_no_half_made_folder(tmp_path, bad, message):
    from mutualat.cli import main

    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--set", "optim.epochs=1", "--set", bad]
    assert main(argv) == 2
    assert not out.exists(), "a failed start left a run folder behind"
    # The same --out works once the mistake is corrected.
    fixed = load_config(None, tiny_overrides(1))
    Trainer(fixed, out)
    assert (out / "config.yaml").is_file()


def test_resume_takes_environment_options_from_the_command_line(full_run, tmp_path, capsys):
    """`train --out RUN --resume --device cpu --data-dir D` overlays those on the saved config;
    any other key is refused with the key named."""
    import shutil

    from mutualat.cli import main

    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    assert main(["train", "--out", str(out), "--resume", "--device", "cpu",
                 "--set", "progress=false"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--set", "optim.epochs=5"]) == 2
    assert "differs from the saved one in optim.epochs" in capsys.readouterr().err
