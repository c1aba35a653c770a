"""Where a study stands (``mutualat compare PLAN --out DIR --status``): what is finished and
what it cost, what can start now, and about how much CPU time that will take.

The estimate for a task that can start is the mean CPU time of the finished tasks of its
family: the same kind (train, eval, ...) of the same variant, any seed or grid point. A task
that was interrupted resumes (a run from its last epoch, an evaluation from its last
attack), so the CPU time its record already holds is taken off. Tasks still waiting on
others are counted, not estimated: which ones they will be depends on what is still to
finish (a grid's choice, for one).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from mutualat.compare import sections
from mutualat.compare.study import Study

#: Record statuses of an invocation that will be resumed: its CPU time counts as done.
_RESUMED = ("interrupted", "running")


def family(slug: str) -> str:
    """A task's kind and variant: "train__mat-a0.6__lr0.2__seed10" -> "train__mat-a0.6"."""
    return "__".join(slug.split("__")[:2])


def status_lines(study: Study) -> list[str]:
    """The lines ``--status`` prints: one per task that can start, then the totals."""
    records = _records(study.out / "tasks")
    done = {slug: r for slug, r in records.items() if r.get("status") == "done"}
    ready, waiting = sections.tasks(study)
    width = max((len(t.key) for t in ready), default=0)
    lines, total, unknown = [], 0.0, 0
    for task in ready:
        like = [r["cpu_s"] for slug, r in done.items()
                if family(slug) == family(task.slug) and slug != task.slug]
        record = records.get(task.slug, {})
        spent = record.get("cpu_s", 0.0) if record.get("status") in _RESUMED else 0.0
        note = ""
        if like:
            left = max(statistics.mean(like) - spent, 0.0)
            total += left
            note = f"about {_amount(left)} (the mean of {len(like)} finished like it)"
        else:
            unknown += 1
            note = "no finished task like it to go by"
        if spent:
            note += f"; {_amount(spent)} already spent"
        lines.append(f"ready    {task.key:<{width}}  {note}")
    finished_cpu = sum(r["cpu_s"] for r in done.values())
    lines.append(f"finished {len(done)} tasks, {_amount(finished_cpu)}")
    last = f"{len(ready)} ready, {waiting} waiting on them"
    if ready:
        last += f"; the ready ones: about {_amount(total)}"
        last += f" ({unknown} of them not estimated)" if unknown else ""
    lines.append(last)
    return lines


def _records(folder: Path) -> dict[str, dict[str, Any]]:
    """Each task's record (its slug -> the record), skipping one that cannot be read."""
    out = {}
    for path in sorted(folder.glob("*.record.json")):
        try:
            out[path.name.removesuffix(".record.json")] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def _amount(seconds: float) -> str:
    """CPU time as people plan it: minutes under an hour, else hours."""
    if seconds < 3600:
        return f"{max(round(seconds / 60), 1) if seconds else 0} CPU-min"
    return f"{seconds / 3600:.1f} CPU-h"

