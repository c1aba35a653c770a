"""What the results scripts share: variant names, run durations, table cells, the command line.

The scripts in this folder regenerate docs/RESULTS.md; these helpers read their own argparse
parsers and name their own run variants, so they live beside them rather than in the
library. A script imports them as ``from common import ...`` (its folder is first on
``sys.path`` when it runs); the tests load this file with ``conftest.script_module``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
from pathlib import Path
from typing import Sequence

from mutualat.report import documents


def run_seconds(run_dir: Path) -> float:
    """A finished run's duration, read from its folder (so also for a reused run): from the
    config written at its start to the results written at its end. A run resumed after an
    interruption also counts the pause."""
    run_dir = Path(run_dir)
    return (run_dir / "results.json").stat().st_mtime - (run_dir / "config.yaml").stat().st_mtime


def machines_text(machines: Sequence[dict]) -> str:
    """The machines and torch versions that runs' and evaluations' records name, in the words
    of ``mutualat compare``'s report (:func:`mutualat.report.documents.machines_text`): "AMD
    EPYC (2 cores), 1 torch thread per job, torch 2.13.0+cpu"; a record without a CPU (a run
    logged before runs recorded their machine) is said as such. Never the machine that
    renders the document."""
    return documents.machines_text(documents.gather_machines(machines), per="job")


def with_alpha(method: str, alpha: float) -> str:
    """A run variant's name for a method at one alpha: ("mat-mp-max", 0.6) -> "mat-mp-max-alpha0.6"."""
    return f"{method}-alpha{alpha:g}"


def split_alpha(variant: str) -> tuple[str, str | None]:
    """The inverse of :func:`with_alpha`: "mat-alpha0.3" -> ("mat", "0.3") (the alpha as
    written in the name); a name without an alpha -> (name, None)."""
    method, _, alpha = variant.partition("-alpha")
    return method, alpha or None


def mean_std_percent(values: Sequence[float]) -> str:
    """Fractions as "mean ± std" in percent, the sample std over seeds (0 for one value)."""
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def command_line(script: str, parser: argparse.ArgumentParser, args: argparse.Namespace,
                 always: Sequence[str] = (), leave_out: Sequence[str] = ("write",)) -> str:
    """The command that reproduces ``args``: ``.venv/bin/python script`` with every option whose
    value is not its default (and those named in ``always``), for a document to quote.

    Reads ``parser._actions``, argparse's list of options: the only place that pairs each
    destination with its flag and default (stable since Python 3.2, but private)."""
    parts = [".venv/bin/python", script]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or action.dest in leave_out:
            continue
        value = getattr(args, action.dest)
        if value == action.default and action.dest not in always:
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._AppendAction):
            for item in value:
                parts += [flag, str(item)]
        elif isinstance(value, bool):
            parts += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)
