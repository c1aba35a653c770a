"""Shared fixtures: where ../shared/data is, and a tiny, fast training config."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mutualat.attacks import ATTACKS, Example

# Test models are tiny: one thread avoids oversubscribing the 2-core CI machine when a test
# starts a training subprocess beside itself, and makes timings steadier.
torch.set_num_threads(1)
# The same for the training subprocesses tests start: a run compared with an in-process
# reference must use the same thread count (the convolutions' summation order depends on it;
# a CLI resume at 2 threads against a 1-thread reference differed by more than 1e-5).
os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MUTUALAT_SHARED_DATA", REPO.parent / "shared" / "data"))


def attack_examples(*families: str) -> dict[str, tuple[str, Example]]:
    """Every registered attack of ``families`` with each example it declares at its
    registration: ``{case: (registry name, example)}``, cases named ``pgd``, ``pgd-l2``, ...
    The every-entry property tests run on these, so a new attack needs no entry in a test."""
    cases = {}
    for name in ATTACKS.names():
        declared = ATTACKS.declared(name)
        if declared.get("family") in families:
            for example in declared.get("examples", ()):
                cases[f"{name}-{example.name}" if example.name else name] = (name, example)
    return cases


def script_module(name: str) -> ModuleType:
    """``scripts/NAME.py`` as a module, loaded from its file: scripts/ is a folder of programs,
    not a package, and its helpers (scripts/common.py) are tested like any other code."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"no shared data at {SHARED_DATA}")
    return SHARED_DATA


def reference_missing(reason: str) -> None:
    """A reference library (torchattacks, AutoAttack) is not importable: skip, except under
    `make test` (CI), which installs them and sets MUTUALAT_REQUIRE_REFERENCES: fail there."""
    if os.environ.get("MUTUALAT_REQUIRE_REFERENCES"):
        pytest.fail(f"{reason} (make test installs it)")
    pytest.skip(reason)


def tiny_overrides(epochs: int = 2) -> list[str]:
    """A run of a few seconds on the embedded data: 512 training images, 2-step PGD."""
    return [
        "data.name=fashion-mnist-embedded",
        "data.train_subset=512",
        "data.val_subset=128",
        "data.test_subset=256",
        "data.batch_size=64",
        "models.0.name=tinycnn",
        f"optim.epochs={epochs}",
        "attack.eps=0.1",
        "attack.steps=2",
        "eval.pgd_steps=2",
        "eval.test_pgd_steps=2",
        "device=cpu",
        "progress=false",
        "deterministic=true",
    ]


class Stopped(Exception):
    """Raised inside a run to interrupt it (as a kill would, but catchable)."""


def train_first_epoch_only(cfg, out: Path) -> None:
    """Train ``cfg`` in ``out`` and interrupt it right after its first epoch ended (its
    checkpoint written): a run to resume."""
    from mutualat.train import Trainer

    original = Trainer._end_of_epoch

    def stop(self):
        original(self)
        raise Stopped

    Trainer._end_of_epoch = stop
    try:
        with pytest.raises(Stopped):
            Trainer(cfg, out).fit()
    finally:
        Trainer._end_of_epoch = original


def set_last_validation_score(run_dir: Path, score: float, drop_n_val: bool = False) -> None:
    """Overwrite the last epoch's validation PGD accuracy of every member of ``run_dir`` (a
    made-up grid result on top of a real run); ``drop_n_val``: as a run trained before
    ``n_val`` was kept."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    for key in [k for k in epochs[-1] if k.startswith("val_pgd/") and k.count("/") == 1]:
        epochs[-1][key] = score
    for r in epochs if drop_n_val else []:
        r.pop("n_val")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
