"""The run folder: creating it, checking it before a resume, and keeping it for one process.

A run folder holds ``config.yaml`` (the resolved config, written first), ``run.json`` (the
run's identity, and the digests of the model files its members start from),
``metrics.jsonl``, ``checkpoint.pt``, ``models/`` and, once finished, ``results.json``.
Nothing here trains: these functions decide whether a folder may be started, continued or
must be refused, and they never change a folder they refuse.

- A new run needs a missing or empty folder (:func:`prepare_run_dir`); its lock and the
  temporaries of a start killed mid-write do not count (:func:`run_contents`).
- ``--resume`` continues from the checkpoint only if it belongs to the folder: its config
  must equal ``config.yaml`` (up to :data:`ENVIRONMENT_KEYS`, and a member's ``init`` file
  found by content where it moved: :func:`config_difference`) and its run identity
  ``run.json`` (:func:`resume_state`); a run killed before its first checkpoint starts again
  from scratch with its saved config (:func:`clear_dead_start`); :func:`resume_or_restart`
  decides which, for the trainer.
- One process at a time: :func:`lock_run_dir` holds an advisory lock the OS drops when the
  process dies.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from mutualat.config import RunConfig, dump_config, from_dict, load_config, to_dict
from mutualat.errors import CheckpointError, ConfigError, TrainingError
from mutualat.methods import resolve_method_params
from mutualat.models.sources import parse_source
from mutualat.models.torch_source import file_digest
from mutualat.files import LOCK, atomic_write_bytes, hold_lock
from mutualat.train.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

#: What atomic_write_bytes writes before renaming it into place (``.NAME.XXXX.tmp``).
TEMPORARY = ".*.tmp"

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
RUN_FILE = "run.json"  # the run's identity, written at creation
# Keys that describe where a run executes, not what it computes: a resumed run may change them.
ENVIRONMENT_KEYS = ("device", "progress", "data.data_dir", "distributed.backend",
                    "distributed.timeout_s")


def prepare_run_dir(out: Path, cfg: RunConfig | None, resume: bool) -> RunConfig:
    """Create the run folder, or check it for ``--resume``; returns the config to run.

    Without ``resume`` an existing non-empty folder is an error and nothing in it is touched.
    With ``resume`` the saved config is authoritative; a config passed in must equal it except
    for :data:`ENVIRONMENT_KEYS`, whose given values are used.
    """
    out = Path(out)
    saved = out / CONFIG
    if resume:
        if not saved.is_file():
            raise ConfigError(f"cannot resume: {out} has no {CONFIG} (is it a run folder?)")
        saved_cfg = load_config(saved)
        if cfg is None:
            return saved_cfg
        differs = config_difference(saved_cfg, cfg, run_inits(out))
        if differs:
            raise ConfigError(
                f"cannot resume {out}: the given config differs from the saved one in "
                f"{differs}; resume without --config/--set, or start a new --out"
            )
        return cfg
    if cfg is None:
        raise ConfigError("a new run needs a config")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    present = run_contents(out)
    if present:
        if saved.is_file() and not (out / CHECKPOINT).is_file():
            raise ConfigError(
                f"run folder {out} holds a run that never reached its first checkpoint "
                f"({', '.join(present)}); pass --resume to start it again from scratch with its "
                "saved config, or choose another --out (nothing was overwritten)"
            )
        raise ConfigError(
            f"run folder {out} already exists and is not empty; pass --resume to continue it "
            "or choose another --out (nothing was overwritten)"
        )
    stale = remove_stale_temporaries(out) if out.is_dir() else []
    if stale:  # a start killed while it wrote its config (this process holds the lock)
        logger.info(f"removed {len(stale)} temporary file(s) an interrupted start left in "
                    f"{out}: {', '.join(stale)}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(saved, dump_config(cfg).encode())
    # The run's identity: a checkpoint copied in from another run is refused on resume. And
    # the contents of the model files its members start from, so that a resume may name a
    # file moved elsewhere (an ARD teacher moved with its study) but not another model.
    atomic_write_bytes(out / RUN_FILE, json.dumps({"run_id": uuid.uuid4().hex,
                                                   "inits": init_digests(cfg)}).encode())
    return cfg


def init_digests(cfg: RunConfig) -> dict[str, str]:
    """``{member index: digest}`` of each ``models.N.init`` read from a local file: a model
    file, or the file of a ``torch:FILE?...`` source (a ``robustbench:NAME`` is compared by
    name)."""
    files = {i: _init_file(m.init) for i, m in enumerate(cfg.models) if m.init}
    return {str(i): file_digest(f[0]) for i, f in files.items() if f and Path(f[0]).is_file()}


def _init_file(init: str) -> tuple[str, str] | None:
    """The local file an ``init`` source reads, and the rest of the source (its kind and
    options), which must match as written; None for a source without a local file."""
    try:
        source = parse_source(init)
    except ConfigError:
        return None
    if source.kind == "file":
        return source.target, "file"
    if source.kind == "torch":
        return source.target, "torch?" + source.text.partition("?")[2]
    return None


def run_inits(out: Path) -> dict[str, str]:
    """The digests of the files a run's members started from (:func:`init_digests`, in
    ``run.json``); empty for a run made before they were recorded."""
    try:
        inits = json.loads((Path(out) / RUN_FILE).read_text()).get("inits", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(inits, dict):
        return {}
    return {k: v for k, v in inits.items() if isinstance(k, str) and k.isdigit() and isinstance(v, str)}


def run_contents(out: Path) -> list[str]:
    """What ``out`` holds that a new run would overwrite: everything but its lock and the
    temporaries of atomic writes (``.NAME.XXXX.tmp``) that a kill left, as when a start was
    killed while writing its config. A new run needs this to be empty."""
    if not Path(out).is_dir():
        return []
    return sorted(p.name for p in Path(out).iterdir() if p.name != LOCK and not p.match(TEMPORARY))


def resume_state(out: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The checkpoint a resumed run continues from, checked against the folder; None when the
    run never reached its first checkpoint (it then starts again from scratch, see
    :func:`clear_dead_start`). Nothing is changed when the checkpoint does not belong here."""
    out = Path(out)
    if not (out / CHECKPOINT).is_file():
        if (out / "results.json").is_file():
            raise CheckpointError(
                f"{out} holds a finished run (results.json) but no {CHECKPOINT}: there is "
                "nothing to resume, and starting again would overwrite its models"
            )
        return None
    state = load_checkpoint(out / CHECKPOINT)
    try:
        recorded = from_dict(RunConfig, state.get("config"))
    except ConfigError as exc:
        raise CheckpointError(f"{out / CHECKPOINT} records a config this version cannot read: "
                              f"{exc}") from None
    differs = config_difference(recorded, cfg, run_inits(out))
    if differs:
        raise CheckpointError(
            f"{out / CHECKPOINT} was written by another config than {out / CONFIG}: they differ "
            f"in {differs} (checkpoint first); restore the folder's config.yaml or start a new "
            "--out (nothing was changed)"
        )
    identity = run_id(out)
    if identity is not None and state.get("run_id") is not None and state["run_id"] != identity:
        raise CheckpointError(
            f"{out / CHECKPOINT} belongs to another run (run id {state['run_id']}, this folder's "
            f"{identity}); put this run's checkpoint back or start a new --out (nothing was changed)"
        )
    return state


def resume_or_restart(out: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """Rank 0: the checked checkpoint to continue from, or None to start again from
    scratch (a run killed before its first checkpoint); stale temporaries removed."""
    state = resume_state(out, cfg)
    stale = remove_stale_temporaries(out)
    if stale:
        logger.info(f"removed {len(stale)} temporary file(s) an interrupted write left in "
                    f"{out}: {', '.join(stale)}")
    if state is None:
        removed = clear_dead_start(out)
        logger.info(f"{out} has no checkpoint (the run stopped before the end of its "
                    f"first epoch): starting it again from scratch with its saved config"
                    + (f"; removed {', '.join(removed)}" if removed else ""))
    return state


def run_id(out: Path) -> str | None:
    try:
        return json.loads((out / RUN_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a run folder from before run identities


def clear_dead_start(out: Path) -> list[str]:
    """What a run killed before its first checkpoint left (a log, perhaps model files of its
    first epoch): removed, so that it starts again from scratch. Returns the names removed."""
    removed = []
    for name in ("metrics.jsonl", "results.json"):
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    for model in sorted((out / "models").glob("*.safetensors")):
        model.unlink()
        removed.append(f"models/{model.name}")
    return removed


def remove_stale_temporaries(out: Path) -> list[str]:
    """Temporaries of atomic writes (``.NAME.XXXX.tmp``) a kill left in the run folder; only
    called by the process holding the folder's lock, so none of them is being written."""
    removed = []
    for folder in (out, out / "models"):
        for tmp in folder.glob(TEMPORARY):
            tmp.unlink(missing_ok=True)
            removed.append(str(tmp.relative_to(out)))
    return removed


def lock_run_dir(out: Path) -> Any:
    """Hold the folder's lock (:func:`mutualat.files.hold_lock`) so that two processes never
    train into one folder; a second one gets a clear error."""
    return hold_lock(out, f"run folder {out} is in use by another training "
                     "process; wait for it to end or choose another --out (nothing was changed)")


def config_difference(saved: RunConfig, given: RunConfig, inits: dict[str, str] | None = None) -> str:
    """Where two configs differ, ignoring :data:`ENVIRONMENT_KEYS` ("" when they agree); the
    method parameters are compared with their defaults filled in, as a run saves them.
    ``inits`` (:func:`run_inits`): a member's ``init`` file is compared by content, the one
    the run started from: the same wherever it is now, and different if it changed."""
    a, b = (to_dict(resolve_method_params(copy.deepcopy(c))) for c in (saved, given))
    for key in ENVIRONMENT_KEYS:
        _pop(a, key)
        _pop(b, key)
    for index, digest in (inits or {}).items():
        i = int(index)
        if i >= min(len(a["models"]), len(b["models"])) or not b["models"][i].get("init"):
            continue
        given, kept = _init_file(b["models"][i]["init"]), _init_file(a["models"][i].get("init") or "")
        if given and kept and given[1] == kept[1] and Path(given[0]).is_file():
            if file_digest(given[0]) != digest:
                return (f"models.{i}.init (the file {given[0]} holds other weights than the run "
                        "started from)")
            a["models"][i]["init"] = b["models"][i]["init"]
    return "" if a == b else (_diff(a, b) or "the config")


def _pop(tree: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.get(part, {})
    tree.pop(last, None)


_ABSENT = "(absent)"  # a key one config lacks: never equal to a value the other has


def _diff(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _diff(a.get(key, _ABSENT), b.get(key, _ABSENT), f"{prefix}{key}.")
            if found:
                return found
        return ""
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):  # models.0.init
        return next((found for i, (x, y) in enumerate(zip(a, b))
                     if (found := _diff(x, y, f"{prefix}{i}."))), "")
    return "" if a == b else f"{prefix.rstrip('.')} ({a!r} saved, {b!r} given)"


def undo_new_run_dir(out: Path, existed: bool) -> None:
    """Empty a new run folder after a failed construction, and remove it if this run made it.

    :func:`prepare_run_dir` starts a new run only in a missing or empty folder, so everything
    in it (the config, perhaps a metrics log or TensorBoard folder) was written by this run.
    """
    for child in out.iterdir() if out.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if not existed:
        with contextlib.suppress(OSError):
            out.rmdir()


@contextlib.contextmanager
def writing(out: Path, name: str, checkpointed: tuple[int, int] | None) -> Iterator[None]:
    """A write of ``name`` into the run folder that fails (a full disk, a quota) stops the run
    with a sentence saying what survives instead of an OSError traceback; the atomic writes
    have removed their temporary file and left the previous version in place."""
    try:
        yield
    except OSError as exc:
        raise TrainingError(
            f"could not write {name} in {out} ({exc.strerror or exc}); "
            f"{what_survives(out, checkpointed)} once the disk has room."
        ) from None


def what_survives(out: Path, checkpointed: tuple[int, int] | None) -> str:
    """Where ``--resume`` would continue from (``checkpointed``: the (epoch, step in epoch) of
    the folder's checkpoint, None before the first), for a message about a stopped run."""
    if checkpointed is None:
        return (f"no checkpoint was written yet: --resume starts {out} again from "
                "scratch with its config")
    epoch, step = checkpointed
    at = f"the end of epoch {epoch}" if step == 0 else f"step {step} of epoch {epoch + 1}"
    return f"the previous checkpoint ({out / CHECKPOINT}, at {at}) is intact: --resume continues from it"
