"""A study's records without its weights: a copy small enough for version control, which
outlives the disk the study ran on and from which the same plan continues.

``mutualat compare PLAN --out OUT --archive DEST`` copies into ``DEST`` every settled run
(finished or diverged), every finished evaluation, table and transfer matrix (and check that a
script such as scripts/apgd_targets_gap.py ran inside the study, recording the model files it
read), and the record, spec and log of every task that finished. Each model file becomes a stand-in,
``<file>.pruned.json`` (:data:`mutualat.compare.records.PRUNED`: its sha256 and header
record), so every check by content still holds; resume checkpoints, locks, unfinished work
and the report's figures stay behind (its comparison.json and .md, which the scripts read,
come along). Archiving again into the same ``DEST`` adds and updates files; it removes none
but those of a run folder that the run no longer has.

``--out DEST`` then continues the study: a finished run stays finished, so its grid point
and its validation curve count, and a finished evaluation stands. A run an evaluation still
needs is trained again, its archived folder set aside in ``pruned-runs/`` first
(:func:`mutualat.compare.records.set_aside_if_pruned`). On the machine, software and
thread count that trained it, it trains to the same weights again
(tests/test_compare_archive.py); elsewhere it is a new run, which ``retrained-<run>.json``
beside it says: its validation score replaces the archived one (a grid's choice may move),
and a finished evaluation of the old weights is refused until moved away.
"""

from __future__ import annotations

import json
from pathlib import Path

from mutualat.compare.records import EVALUATED, PRUNED, file_digest, task_records
from mutualat.errors import ConfigError
from mutualat.models.io import read_model_meta
from mutualat.files import LOCK, atomic_write_bytes

MARK = "archive.json"  # in an archive's root: which plan's study it holds
#: Never archived: weights (a stand-in replaces each), resume checkpoints, locks.
LEFT_OUT = (".safetensors", "checkpoint.pt", LOCK, ".tmp")
#: Kept out of version control in an archive that a study continues in, or renders from.
IGNORED = ["*.safetensors", "checkpoint.pt", "*.lock", "*.tmp", "/*.png"]


def archive_study(out: Path, dest: Path, plan_name: str) -> dict[str, int]:
    """Copy study ``out``'s finished work into ``dest`` (see the module docstring); returns
    how many runs, evaluations (the study's own), checks (scripts' evaluations inside it) and
    task records it holds now, and the files written."""
    out, dest = Path(out), Path(dest)
    if not (out / "runs").is_dir() and not (out / "tasks").is_dir():
        raise ConfigError(f"{out} holds no study (no runs/ or tasks/ folder): nothing to archive")
    if dest.resolve() == out.resolve() or out.resolve() in dest.resolve().parents:
        raise ConfigError(f"--archive {dest} lies inside the study {out}: give a folder elsewhere")
    mark = dest / MARK
    if dest.exists() and any(dest.iterdir()):
        held = json.loads(mark.read_text()).get("plan") if mark.is_file() else None
        if held != plan_name:
            raise ConfigError(
                f"{dest} is not empty and holds no archive of plan {plan_name!r} "
                f"({'no ' + MARK if held is None else 'it holds ' + repr(held)}); give an empty "
                "or new folder (nothing was written)")
    for torn in dest.rglob(".*.tmp"):  # an earlier archive's, killed while it wrote
        torn.unlink()
    counts = {"runs": 0, "evaluations": 0, "checks": 0, "tasks": 0, "written": 0}
    settled = {p.parent for name in ("results.json", "diverged.json")
               for p in (out / "runs").glob(f"*/*/*/{name}")}
    for run in sorted(settled):
        counts["written"] += _copy_run(run, dest / run.relative_to(out))
        counts["runs"] += 1
    for aside in sorted(p.parent for p in (out / "pruned-runs").glob("*/*/*/results.json")):
        counts["written"] += _copy_run(aside, dest / aside.relative_to(out))
    for beside in sorted([*(out / "runs").glob("*/*/teacher-of-*.json"),
                          *(out / "runs").glob("*/*/retrained-*.json")]):
        counts["written"] += _copy(beside, dest / beside.relative_to(out))
    # An evaluation has finished once it names the models it read (written after its summary):
    # the study's own (evals/, tables/) and the checks scripts ran into it (apgd-targets-gap/).
    finished = [p.parent for p in out.rglob("summary.json") if (p.parent / EVALUATED).is_file()
                and p.relative_to(out).parts[0] not in ("runs", "pruned-runs")]
    finished += [p.parent for p in (out / "transfer").glob("*/transfer.json")]
    for folder in sorted(finished):
        for file in sorted(f for f in folder.rglob("*") if f.is_file() and not _left_out(f)):
            counts["written"] += _copy(file, dest / file.relative_to(out))
        own = folder.relative_to(out).parts[0] in ("evals", "tables", "transfer")
        counts["evaluations" if own else "checks"] += 1
    for slug, record in task_records(out).items():
        if record.get("status") != "done":
            continue
        for file in (out / "tasks" / f"{slug}.record.json", out / "tasks" / f"{slug}.json",
                     out / "logs" / f"{slug}.log"):
            if file.is_file():
                counts["written"] += _copy(file, dest / file.relative_to(out))
        counts["tasks"] += 1
    counts["written"] += _write(mark, (json.dumps(
        {"plan": plan_name, "archive of": "mutualat compare: a study's records without model "
         "weights (mutualat.compare.archive)"}, indent=2) + "\n").encode())
    for report in ("comparison.json", "comparison.md"):  # what the scripts read
        if (out / report).is_file():
            counts["written"] += _copy(out / report, dest / report)
    if not (dest / ".gitignore").exists():
        counts["written"] += _write(dest / ".gitignore", "".join(f"{p}\n" for p in IGNORED).encode())
    return counts


def _copy_run(run: Path, target: Path) -> int:
    """A settled run's folder without weights or checkpoint, each model file a stand-in; what
    an earlier archive of it holds that the run no longer has (a diverged.json, say) goes."""
    written, kept = 0, set()
    for file in sorted(f for f in run.rglob("*") if f.is_file()):
        if file.name.endswith(".safetensors"):
            stub = {"sha256": file_digest(file), "meta": read_model_meta(file)}
            kept.add(target / f"{file.relative_to(run)}{PRUNED}")
            written += _write(target / f"{file.relative_to(run)}{PRUNED}",
                              (json.dumps(stub, indent=2, sort_keys=True) + "\n").encode())
        elif not _left_out(file):
            kept.add(target / file.relative_to(run))
            written += _copy(file, target / file.relative_to(run))
    for stale in [f for f in target.rglob("*") if f.is_file() and f not in kept]:
        stale.unlink()
        written += 1
    return written


def _left_out(file: Path) -> bool:
    return file.name.endswith(LEFT_OUT)


def _copy(source: Path, target: Path) -> int:
    """Copy unless ``target`` already holds the same bytes; 1 if it wrote."""
    return _write(target, source.read_bytes())


def _write(target: Path, data: bytes) -> int:
    """Write ``data`` unless ``target`` already holds it; 1 if it wrote."""
    if target.is_file() and target.read_bytes() == data:
        return 0
    atomic_write_bytes(target, data)
    return 1
