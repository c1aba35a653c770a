"""Faults injected into runs, and what the user gets: a clear error that names the problem,
exits non-zero and changes nothing already written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mutualat.cli import main
from mutualat.config import load_config
from mutualat.train import Trainer

from conftest import tiny_overrides


def _train_argv(out: Path, overrides: list[str], *extra: str) -> list[str]:
    argv = ["train", "--out", str(out), *extra]
    for assignment in overrides:
        argv += ["--set", assignment]
    return argv


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
