"""Metrics to ``metrics.jsonl`` in the run folder, and to TensorBoard when it is installed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mutualat.errors import DataError


class MetricsLog:
    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, global_step: int) -> None:
        """On resume, drop records written after the checkpoint the run continues from (and a
        last line torn by a kill)."""
        if not self.path.exists():
            return
        kept = [line for line, record in _read_lines(self.path)
                if record.get("global_step", 0) <= global_step]
        self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, event: str, global_step: int, **values: Any) -> None:
        record = {"event": event, "global_step": global_step, **values}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{event}/{key}", value, global_step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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
