"""Markdown documents that commands regenerate: a marked section replaced in place, and the
command that wrote it, quoted for a reader to rerun.

``mutualat compare --write DOC`` and the results scripts (scripts/results_*.py) keep their
tables in docs/RESULTS.md this way: each owns the text between its two markers, and the
rest of the document, written by hand, is never touched. Both say where their numbers were
computed in the same words (:func:`gather_machines`, :func:`machines_text`), from the
records the runs and evaluations wrote, never from the machine that renders the document.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Iterable, Sequence

from mutualat.files import atomic_write_bytes


def shell_command(argv: Sequence[str]) -> str:
    """``argv`` as a shell command for a document: quoted, with the home folder written ``~``
    (a path under it is specific to one machine)."""
    home = os.path.expanduser("~").rstrip("/")

    def tidy(arg: str) -> str:
        quoted = shlex.quote(arg)
        if arg == home or arg.startswith(home + "/"):
            return "~" + shlex.quote(arg[len(home):]) if arg != home else "~"
        return quoted

    return " ".join(tidy(a) for a in argv)


def write_section(path: Path, begin: str, end: str, body: str) -> None:
    """Put ``body`` (which starts with ``begin`` and ends with ``end``) in the document at
    ``path`` in place of the text between those markers, or at its end if they are absent;
    the rest of the document is kept as it is."""
    path = Path(path)
    if not (body.startswith(begin) and body.rstrip().endswith(end)):
        raise ValueError("the section must start and end with its markers")
    text = path.read_text() if path.exists() else "# Results\n\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        if end not in rest:
            raise ValueError(f"{path} has {begin!r} without {end!r}; mend the document first")
        text = head + body + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    atomic_write_bytes(path, text.encode())  # a kill leaves the document whole


def gather_machines(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The machines that ``records`` name (:func:`mutualat.device.machine_record`'s, as runs and
    evaluations wrote them): one entry per CPU model, instruction set (where recorded) and core
    count, with the GPUs used on it merged in (a task on that machine's CPU records none); the
    torch threads and versions the records state; and how many records name no machine
    (written before records did). Sorted, so the same records in any order gather the same way."""
    found: dict[tuple, dict[str, Any]] = {}  # (cpu, isa, cores) -> the machine, GPUs merged
    threads: set[int] = set()
    versions: set[str] = set()
    unnamed = 0
    for record in records:
        if isinstance(record.get("threads"), int):
            threads.add(record["threads"])
        if record.get("torch"):
            versions.add(record["torch"])
        if not record.get("cpu"):
            unnamed += 1
            continue
        key = (record["cpu"], record.get("isa"), record.get("cpu_count"))
        entry = found.setdefault(key, {"cpu": key[0], "isa": key[1], "cpu_count": key[2],
                                       "gpus": []})
        if record.get("gpu") and record["gpu"] not in entry["gpus"]:
            entry["gpus"].append(record["gpu"])
    for entry in found.values():
        entry["gpus"].sort()

    def order(machine: dict[str, Any]) -> tuple:  # by name, instructions, fewest cores first
        cores = machine["cpu_count"]
        return (str(machine["cpu"]), str(machine["isa"] or ""),
                cores if isinstance(cores, int) else -1, str(cores))

    return {"machines": sorted(found.values(), key=order),
            "threads": sorted(threads), "torch": sorted(versions), "unnamed": unnamed}


def machines_text(gathered: dict[str, Any], per: str = "task") -> str:
    """What :func:`gather_machines` found, as a document says it: ``AMD EPYC (AVX2, 2 cores), 1
    torch thread per task, torch 2.13.0+cpu`` (the instruction set where records name it);
    several machines joined by "; " (a GPU inside the parentheses), the thread counts where
    recorded (``per``: what one count belongs to), and a machine no record names said as such."""
    listed = [f"{m['cpu']} (" + (f"{m['isa']}, " if m.get("isa") else "")
              + f"{m['cpu_count']} cores" + "".join(f", {gpu}" for gpu in m["gpus"]) + ")"
              for m in gathered["machines"]]
    if gathered["unnamed"]:
        listed.append("a machine its records do not name")
    text = "; ".join(listed) or "machines not recorded"
    threads = gathered["threads"]
    if threads:
        text += (f", {'/'.join(map(str, threads))} torch thread{'s' if threads != [1] else ''} "
                 f"per {per}")
    if gathered["torch"]:
        text += f", torch {' and '.join(gathered['torch'])}"
    return text
