"""Faults injected into runs, and what the user gets: a clear error that names the problem,
exits non-zero and changes nothing already written, or a run that goes on as if nothing
happened.
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
from pathlib import Path

import pytest
import torch

from mutualat.cli import main
from mutualat.config import load_config
from mutualat.errors import DataError, TrainingError
from mutualat.train import Trainer, checkpoint
from mutualat.train.checkpoint import load_checkpoint
from mutualat.train.logger import MetricsLog, read_metrics

from conftest import tiny_overrides


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


def test_a_nan_before_the_first_checkpoint_does_not_claim_one(tmp_path, monkeypatch):
    from mutualat.methods.at import AT
    from mutualat.methods.base import StepResult

    def nan_loss(self, models, x, y):
        return StepResult(models[0](x).sum() * float("nan"))

    monkeypatch.setattr(AT, "loss", nan_loss)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError) as info:
        Trainer(load_config(None, tiny_overrides(1)), out).fit()
    message = str(info.value)
    assert "loss became nan at epoch 1, step 1" in message
    assert f"no checkpoint was written yet: --resume starts {out} again from scratch" in message
    assert "intact" not in message and not (out / "checkpoint.pt").exists()


class _FullDisk:
    """The ``os`` module as mutualat.train.checkpoint sees it on a full disk."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(full_run, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "run"
    original = Trainer._end_of_epoch
    first: dict[str, bytes] = {}

    def fill_the_disk_after_epoch_1(self):
        original(self)
        if self.epoch == 1:
            first["checkpoint"] = (out / "checkpoint.pt").read_bytes()
            monkeypatch.setattr(checkpoint, "os", _FullDisk())

    monkeypatch.setattr(Trainer, "_end_of_epoch", fill_the_disk_after_epoch_1)
    with pytest.raises(TrainingError) as info:
        Trainer(load_config(None, tiny_overrides(2)), out).fit()
    message = str(info.value)
    del info  # its traceback holds the stopped trainer, and with it the run folder's lock
    gc.collect()
    assert f"could not write checkpoint.pt in {out} ({os.strerror(errno.ENOSPC)})" in message
    assert (f"the previous checkpoint ({out / 'checkpoint.pt'}, at the end of epoch 1) is "
            "intact: --resume continues from it once the disk has room") in message
    assert (out / "checkpoint.pt").read_bytes() == first["checkpoint"]
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()  # space again
    Trainer(None, out, resume=True).fit()
    _assert_identical_weights(out, full_run)


def test_a_torn_last_metrics_line_is_skipped_and_a_corrupt_one_named(full_run, tmp_path, capsys):
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
