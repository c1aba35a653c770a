"""What a study's folder records about how each result was made, and the checks that a
result is still the one the plan asks for: a student's teacher model (by content), a
file's digest, an evaluation's suite and test subset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mutualat.config import load_config
from mutualat.errors import ConfigError
from mutualat.evaluation import load_suite
from mutualat.models.io import read_model_meta
from mutualat.models.torch_source import file_sha256
from mutualat.files import atomic_write_bytes


#: In an evaluation folder of a study: name -> sha256 of each model file the evaluation read.
EVALUATED = "evaluated-models.json"


#: Beside a model file that an archived study left out (mutualat.compare.archive): what
#: stands in for it, ``{"sha256", "meta"}`` (its digest and its header's record).
PRUNED = ".pruned.json"


def _stand_in(path: str | Path) -> dict[str, Any] | None:
    """The stand-in of a model file an archive left out; None where the file is there."""
    stub = Path(f"{path}{PRUNED}")
    return json.loads(stub.read_text()) if not Path(path).exists() and stub.is_file() else None


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex, all 64 digits; remembered while its size and
    modification time stay): what a study's records name a model file by. A model file an
    archive left out is named by its stand-in's record."""
    stub = _stand_in(path)
    return stub["sha256"] if stub is not None else file_sha256(path)


def model_meta(path: str | Path) -> dict[str, Any]:
    """A model file's header record (:func:`mutualat.models.io.read_model_meta`), or its
    stand-in's where an archive left the file out."""
    stub = _stand_in(path)
    return stub["meta"] if stub is not None else read_model_meta(path)


def pruned(files: list[str]) -> bool:
    """Whether any of a finished run's model ``files`` was left out by an archive."""
    return any(Path(f"{f}{PRUNED}").is_file() and not Path(f).exists() for f in files)


def model_files(run_dir: Path, checkpoint: str = "last") -> dict[str, str]:
    """A finished run's trained members (a frozen teacher is not one): role -> model file;
    at the best checkpoint only the members validated each epoch (eval.val_roles)."""
    suffix = ".best" if checkpoint == "best" else ""
    roles = json.loads((run_dir / "results.json").read_text())["models"]
    if checkpoint == "best":
        validated = load_config(run_dir / "config.yaml").eval.val_roles
        roles = [r for r in roles if validated is None or r in validated]
    return {role: str(run_dir / "models" / f"{role}{suffix}.safetensors") for role in roles}


def set_aside_if_pruned(run_dir: Path) -> Path | None:
    """Move a finished run an archive left without its model files (``runs/<variant>/<setting>/
    <name>``) to ``pruned-runs/`` of its study, beside any moved there before, so that it can
    be trained again: nothing of it is lost. Returns where it went (None: not such a run)."""
    results = run_dir / "results.json"
    if not results.is_file():
        return None
    if not pruned(list(model_files(run_dir).values())):
        return None
    parts, k = run_dir.parts[-3:], 1
    aside = run_dir.parents[3] / "pruned-runs" / Path(*parts)
    while aside.exists():
        k += 1
        aside = aside.with_name(f"{parts[-1]}-{k}")
    aside.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(aside)
    where = str(aside.relative_to(run_dir.parents[3]))
    _write_json(retrained_record(run_dir), {"set_aside": where})
    return aside


def retrained_record(run_dir: Path) -> Path:
    """Beside a run trained again from an archive: where its archived folder went and, once
    it has finished, whether it trained to the archived weights (:func:`compare_retrained`)."""
    return run_dir.parent / f"retrained-{run_dir.name}.json"


def compare_retrained(run_dir: Path) -> dict[str, Any] | None:
    """For a run trained again that has finished, record whether each model file's sha256 is
    the archived one (``differs``: the roles whose weights are new); None if the run is not
    such a run or has not finished. On another machine, thread count or software it seldom
    is: the run is then a new one, and evaluations made of the old weights are refused."""
    path = retrained_record(run_dir)
    if not path.is_file() or not (run_dir / "results.json").is_file():
        return None
    record = json.loads(path.read_text())
    if "differs" not in record:
        aside = run_dir.parents[3] / record["set_aside"]
        files = sorted((run_dir / "models").glob("*.safetensors"))
        record["differs"] = [f.name.removesuffix(".safetensors") for f in files
                             if file_digest(f) != file_digest(aside / "models" / f.name)]
        _write_json(path, record)
    return record


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def spec_digest(spec: dict[str, Any]) -> str:
    """A task's spec as its record keeps it: the first 16 hex digits of the sha256 of its JSON
    (keys sorted). A record whose digest differs belongs to an earlier version of the task."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def teacher_record(run_dir: Path) -> Path:
    """Where the worker keeps the sha256 of the teacher model a student's run trains against:
    beside the run folder (a new run's folder must be empty)."""
    return run_dir.parent / f"teacher-of-{run_dir.name}.json"


def task_records(out: Path) -> dict[str, dict[str, Any]]:
    """A study's task records (``tasks/<slug>.record.json``, written by the worker's
    ``Record``) by the task's slug; one that cannot be read, or lacks its CPU time (a hand
    edit), is left out."""
    records = {}
    for path in sorted((Path(out) / "tasks").glob("*.record.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("cpu_s"), (int, float)):
            records[path.name.removesuffix(".record.json")] = record
    return records


def read_summary(eval_dir: Path) -> dict[str, Any]:
    """An evaluation folder's ``summary.json``."""
    return json.loads((Path(eval_dir) / "summary.json").read_text())


def suite_record(suite: str) -> dict[str, Any]:
    """What an evaluation summary keeps of ``suite``, and the value each calibrated strength
    ("calibrated:28x28") stands for now."""
    loaded = load_suite(suite)
    calibrated = {a.id: float(loaded.build(a).eps) for a in loaded.attacks
                  if isinstance(loaded.threat_of(a).eps, str)}
    return {**loaded.to_dict(), "calibrated": calibrated}


def evaluation_differences(summary: dict[str, Any], record: dict[str, Any], n: int,
                           seed: int) -> list[str]:
    """What differs between an evaluation's ``summary.json`` and the suite (its
    :func:`suite_record`) and test subset (``n`` images drawn with ``seed``) asked for."""
    used = next(iter(summary["models"].values()))["attacks"] if summary["models"] else {}
    want = {**{k: record[k] for k in ("per_attack", "threats", "attacks")}, "images": [n, seed],
            "calibrated strengths": record["calibrated"]}
    have = {**{k: summary["suite"].get(k) for k in ("per_attack", "threats", "attacks")},
            "images": [summary["data"].get("subset"), summary["data"].get("subset_seed")],
            "calibrated strengths": {a: used.get(a, {}).get("eps") for a in record["calibrated"]}}
    return [k for k in want if want[k] != have[k]]


def evaluation_holds(eval_dir: Path, suite: str, record: dict[str, Any], n: int, seed: int,
                     files: dict[str, str] | None = None, models: list[str] | None = None) -> bool:
    """Whether ``eval_dir`` holds a finished evaluation; only of ``suite`` (a name or file;
    ``record`` its :func:`suite_record`) and the test subset asked for, of at least the ``models`` named and,
    where ``files`` (name -> model file) are given, of those very models (by content,
    :data:`EVALUATED`), else an error says what differs: a plan edited or a run trained
    again after the evaluation ran must not report the old numbers."""
    path = eval_dir / "summary.json"
    if not path.is_file():
        return False
    summary = json.loads(path.read_text())
    differs = evaluation_differences(summary, record, n, seed)
    missing = [m for m in models or [] if m not in summary["models"]]
    if missing:
        differs.append(f"models (it lacks {', '.join(missing)})")
    evaluated = eval_dir / EVALUATED
    if files is not None and evaluated.is_file():
        if json.loads(evaluated.read_text()) != {k: file_digest(f) for k, f in files.items()}:
            differs.append("models (one was trained again since)")
    if differs:
        raise ConfigError(
            f"{eval_dir} holds an evaluation with other {' and '.join(differs)} than the plan "
            f"asks for now (suite {Path(str(suite)).stem}): something changed after it ran. Restore "
            "what changed, or move the folder away to evaluate again (nothing was overwritten)")
    # A task stopped between its summary and its record of which files it evaluated is not
    # finished: it runs again, and the evaluator reuses the folder's columns only for models
    # of the same weights as its manifest's (else it refuses the folder), then the record.
    return files is None or evaluated.is_file()
