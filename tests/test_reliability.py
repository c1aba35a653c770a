"""Faults injected into runs, and what the user gets: a clear error that names the problem,
exits non-zero and changes nothing already written, or a run that goes on as if nothing
happened.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mutualat.cli import main
from mutualat.config import load_config
from mutualat.errors import DataError
from mutualat.train import Trainer
from mutualat.train.logger import MetricsLog, read_metrics

from conftest import tiny_overrides


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
