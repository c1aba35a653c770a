"""``mutualat train --dry-run``: build everything a run builds, take one training step, stop.

Reads and subsets the data, builds every member (``init`` files loaded), the method and the
optimizers exactly as :class:`~mutualat.train.Trainer` does, in a temporary folder, then runs
the trainer's own loop for a single batch. Catches in seconds what would otherwise fail after
a download or an epoch: a shape that does not fit, a missing teacher file, a NaN at the first
step, memory. Nothing is written to the run folder; it is only checked to be usable.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from mutualat.config import RunConfig
from mutualat.errors import ConfigError
from mutualat.train.preflight import check_names
from mutualat.train.run_dir import run_contents
from mutualat.train.trainer import Trainer


class _FirstBatch:
    """A loader that yields only the first batch of each epoch (and says it has one)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return 1

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator:
        return itertools.islice(self.loader.epoch(epoch, start_step=start_step), 1)


@contextlib.contextmanager
def _without_env(name: str) -> Iterator[None]:
    # A rehearsal must not open a Weights & Biases run: the metrics log reads this variable.
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def check_out_dir(out: Path, resume: bool) -> None:
    """The rule :func:`~mutualat.train.run_dir.prepare_run_dir` applies, without touching ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    if resume:
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"cannot resume: {out} has no config.yaml (is it a run folder?)")
        return
    if run_contents(out):
        raise ConfigError(f"run folder {out} already exists and is not empty; the real run would "
                          "refuse it (pass --resume to continue it, or choose another --out)")


def dry_run(cfg: RunConfig, out: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Build the run of ``cfg`` and take one step; returns what was built and the step's record.

    ``out``: the run folder the real command would use, checked but never created or written.
    """
    check_names(cfg)
    if out is not None:
        check_out_dir(out, resume)
    with tempfile.TemporaryDirectory(prefix="mutualat-dry-run-") as tmp, _without_env("MUTUALAT_WANDB"):
        trainer = Trainer(cfg, Path(tmp) / "run")
        try:
            built = {
                "data": trainer.dataset.name,
                "input_shape": list(trainer.dataset.input_shape),
                "train_images": trainer.loader.num_examples,
                "val_images": 0 if trainer.val is None else len(trainer.val.labels),
                "test_images": len(trainer.test.labels),
                "batch_size": cfg.data.batch_size,
                "device": str(trainer.device),
                "method": trainer.method.registered_name,
                "members": {m.role: {"model": cfg.models[m.index].name, "frozen": m.frozen,
                                     "parameters": sum(p.numel() for p in m.model.parameters())}
                            for m in trainer.cohort},
            }
            trainer.loader = _FirstBatch(trainer.loader)
            tick = time.perf_counter()
            trainer._train_epoch()  # the trainer's own step, so the rehearsal is the real thing
            built["step_seconds"] = time.perf_counter() - tick
            trainer.log.close()
            records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
            built["step"] = next(r for r in reversed(records) if r["event"] == "step")
        finally:
            trainer.log.close()
            trainer.release()
    return built

