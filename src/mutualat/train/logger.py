"""Metrics to ``metrics.jsonl`` in the run folder, and the same scalars to TensorBoard (when
installed) and Weights & Biases (when enabled).

``metrics.jsonl`` is the record every report reads. :class:`ScalarSinks` mirrors each of its
numbers (nested ones flattened to ``event/key/sub``) to the dashboards people already use:

- TensorBoard: ``<run>/tensorboard`` whenever ``torch.utils.tensorboard`` imports
  (``pip install "mutualat[tensorboard]"``);
- Weights & Biases: when ``MUTUALAT_WANDB`` is set (``1``/``on``: project ``mutualat``; any
  other word: that project) and ``wandb`` imports (``pip install "mutualat[wandb]"``). The W&B
  run is named after the folder and keyed by the run's id, so ``--resume`` continues it;
  W&B's own variables (``WANDB_MODE=offline``, ``WANDB_ENTITY``...) apply as usual.

An environment variable rather than a config key: where a run reports is not part of what it
computes, so turning W&B on never makes a run folder differ from its config.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

logger = logging.getLogger(__name__)

WANDB_ENV = "MUTUALAT_WANDB"
_OFF = ("", "0", "off", "false", "no")

from mutualat.errors import DataError
from mutualat.files import atomic_write_bytes


def scalars(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every finite number in ``values`` as ``(key, value)``, nested mappings flattened with
    ``/`` (booleans and text are not scalars)."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from scalars(value, f"{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


def wandb_project() -> str | None:
    """The W&B project :data:`WANDB_ENV` asks for, or None when W&B is off."""
    value = os.environ.get(WANDB_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    return "mutualat" if value.lower() in ("1", "on", "true", "yes") else value


class ScalarSinks:
    """TensorBoard and W&B, each only when available: ``log(event, step, values)`` sends the
    scalars of one ``metrics.jsonl`` record as ``event/key``."""

    def __init__(self, folder: Path, tensorboard: bool = True, job: str = "train",
                 run_id: str | None = None) -> None:
        folder = Path(folder)
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(folder / "tensorboard"))
        project = wandb_project()
        if project is not None:
            try:
                import wandb
            except ImportError:
                logger.warning(f"{WANDB_ENV} is set but wandb is not installed (pip install "
                               "\"mutualat[wandb]\"); logging to metrics.jsonl only")
                wandb = None
            if wandb is not None:
                self._wandb = wandb.init(project=project, name=folder.name, dir=str(folder),
                                         id=run_id, resume="allow" if run_id else None,
                                         job_type=job)

    def log(self, event: str, global_step: int, values: Mapping[str, Any]) -> None:
        flat = dict(scalars(values, f"{event}/"))
        if self._tb is not None:
            for key, value in flat.items():
                self._tb.add_scalar(key, value, global_step)
        if self._wandb is not None:
            if event == "start" and isinstance(values.get("config"), Mapping):
                self._wandb.config.update(dict(values["config"]), allow_val_change=True)
            if flat:
                self._wandb.log(flat, step=global_step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


class MetricsLog:
    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.sinks = ScalarSinks(Path(run_dir), tensorboard, "train", _run_id(Path(run_dir)))

    def truncate_after(self, global_step: int) -> None:
        """On resume, drop records written after the checkpoint the run continues from (and a
        last line torn by a kill), and the machine of an earlier resume from that same
        checkpoint, whose work was lost with it (the stretch that wrote the checkpoint began
        before it)."""
        if not self.path.exists():
            return
        kept = [line for line, record in _read_lines(self.path)
                if record.get("global_step", 0) <= global_step
                and not (record.get("event") == "machine" and record.get("global_step") == global_step
                         and global_step > 0)]
        # Atomically: a kill while resuming must not lose the history it keeps.
        atomic_write_bytes(self.path, "".join(k + "\n" for k in kept).encode())

    def write(self, event: str, global_step: int, *, sinks: bool = True, **values: Any) -> None:
        """Append a record; ``sinks=False`` keeps it out of TensorBoard and W&B (a record of
        the setting, not a curve)."""
        record = {"event": event, "global_step": global_step, **values}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, default=float) + "\n")
        if sinks:
            self.sinks.log(event, global_step, values)

    def close(self) -> None:
        self.sinks.close()


def _run_id(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def log_summary(out_dir: Path, summary: Mapping[str, Any]) -> None:
    """An evaluation summary's numbers to TensorBoard and W&B (as ``eval/<model>/...``):
    clean, R_avg, R_worst, each threat type and each attack, at step 0."""
    values = {
        name: {"clean": m["clean"], "r_avg": m["r_avg"], "r_worst": m["r_worst"],
               "threats": m["threats"],
               "attacks": {a: entry["accuracy"] for a, entry in m["attacks"].items()}}
        for name, m in summary["models"].items()
    }
    sinks = ScalarSinks(Path(out_dir), job="eval")
    try:
        sinks.log("eval", 0, values)
    finally:
        sinks.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``, in order ([] when there is none).

    A kill during a write can tear the last line, which is then left out; a line that does not
    parse anywhere else is a :class:`DataError` naming the file and the line.
    """
    path = Path(run_dir) / "metrics.jsonl"
    return [record for _, record in _read_lines(path)] if path.exists() else []


def _read_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of every record of the log at ``path``; see :func:`read_metrics`."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break  # torn by a kill while it was written
            raise DataError(f"{path}, line {number}, is not a JSON record ({exc}); the metrics "
                            "log is corrupt there") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}, is not a JSON record: {line[:80]!r}")
        records.append((line, record))
    return records


MACHINE_KEY = ("cpu", "cpu_count", "gpu", "threads", "torch")  # what tells two machines apart


def run_machines(run_dir: Path) -> list[dict[str, Any]]:
    """The machines a training run computed on, from its log's ``machine`` records (one per
    start or resume of the run, naming every process of a distributed one): each once, in the
    order first seen, told apart by :data:`MACHINE_KEY`. A run logged before machines were
    recorded gives what its ``start`` record kept (device, torch, host; no CPU); [] for a run
    without either."""
    records = read_metrics(run_dir)
    found: dict[tuple, dict[str, Any]] = {}
    for record in records:
        if record.get("event") == "machine":
            for machine in record.get("ranks") or [record]:
                entry = {k: v for k, v in machine.items()
                         if k not in ("event", "global_step", "ranks", "processes")}
                found.setdefault(tuple(entry.get(k) for k in MACHINE_KEY), entry)
    if not found:
        return [{k: r[k] for k in ("device", "torch", "host") if k in r}
                for r in records if r.get("event") == "start"][:1]
    return list(found.values())


class NullLog:
    """The metrics log of the processes other than rank 0: they write nothing."""

    def write(self, event: str, global_step: int, *, sinks: bool = True, **values: Any) -> None:
        pass

    def truncate_after(self, global_step: int) -> None:
        pass

    def close(self) -> None:
        pass
