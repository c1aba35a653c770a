"""One attack on one model, batch by batch: seeded, every point checked, resumable.

The evaluator (:mod:`mutualat.evaluation.evaluator`) calls :func:`model_outcomes` per model;
it runs each attack of the suite with :func:`run_attack` on the examples still to attack
and keeps the outcome columns in the model's folder. Every returned point is checked
(:func:`valid_points`) before it may count as broken, and each batch's randomness is seeded
from (seed, model, attack, restart, batch), so a rerun or a resumed run gives the same
column. :mod:`mutualat.evaluation.transfer` shares the input helpers.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mutualat.attacks import attack_mode, make_threat
from mutualat.data import to_unit
from mutualat.device import machine_record
from mutualat.evaluation.records import EvaluationError, write_npz
from mutualat.evaluation.suite import Suite, Threat
from mutualat.evaluation.worst_case import BROKEN, NOT_ATTACKED, ROBUST, candidates

logger = logging.getLogger(__name__)


def batch_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed from the run seed and a (model, attack, restart, batch) key."""
    return zlib.crc32("/".join(str(p) for p in (seed, *parts)).encode()) & 0x7FFFFFFF


def as_tensors(images: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    y = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels
    x, y = x.detach().cpu(), y.detach().cpu().long()
    if x.dim() != 4 or y.shape != x.shape[:1]:
        raise EvaluationError(
            f"expected images (N, C, H, W) and labels (N,); got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if len(y) == 0:
        raise EvaluationError("nothing to evaluate: 0 examples")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise EvaluationError(f"images must be uint8 or float in [0,1], got {x.dtype}")
    return x, y


def to_float01(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return to_unit(x.to(device))


def valid_points(x: torch.Tensor, x_adv: torch.Tensor, threat: Threat) -> torch.Tensor:
    """``(B,)`` bool: ``x_adv`` is finite, in [0,1] and inside the threat's ball (with a
    tolerance for float rounding)."""
    flat = x_adv.flatten(1)
    ok = torch.isfinite(flat).all(dim=1) & (flat >= -1e-6).all(dim=1) & (flat <= 1 + 1e-6).all(dim=1)
    if threat.norm is not None and threat.eps is not None:
        norms = make_threat(threat.norm, threat.eps).norm_of((x_adv - x).double())
        ok &= norms <= threat.eps * (1 + 1e-5) + 1e-6
    return ok


@torch.no_grad()
def correct_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with attack_mode(model, "eval"):
        return model(x).argmax(dim=1) == y


def clean_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  batch_size: int, device: torch.device) -> np.ndarray:
    out = np.zeros(len(labels), dtype=bool)
    for start in range(0, len(labels), batch_size):
        x = to_float01(images[start:start + batch_size], device)
        y = labels[start:start + batch_size].to(device)
        out[start:start + batch_size] = correct_on(model, x, y).cpu().numpy()
    return out


def run_attack(
    model: nn.Module,
    attack: Any,
    threat: Threat,
    images: torch.Tensor,
    labels: torch.Tensor,
    todo: np.ndarray,
    restarts: int,
    batch_size: int,
    device: torch.device,
    seed_key: tuple,
    progress: bool = True,
    desc: str = "",
    partial: Path | None = None,
    layout: str | None = None,
) -> tuple[np.ndarray, int, str | None]:
    """Run ``attack`` ``restarts`` times on the examples where ``todo`` is True.

    Returns the outcome column ``(N,)`` (``NOT_ATTACKED`` outside ``todo``), the number of
    invalid points returned (counted as failures) and the memory layout the attack ran in:
    ``layout``, or "mixed" when it continued a part run in another one. Each restart only
    attacks what is still robust; each batch is seeded from ``seed_key + (restart, batch)``.

    ``partial``: a file where the progress is saved after every batch (the column so far,
    the restart and batch reached, the examples that restart attacks); if it exists, the
    attack continues from there. Since every batch has its own seed, an interrupted and
    resumed attack gives the same column as an uninterrupted one, and a long attack (C&W,
    PGD-1000) loses at most one batch to an interruption.
    """
    col = np.full(len(labels), NOT_ATTACKED, dtype=np.int8)
    col[todo] = ROBUST
    alive = np.flatnonzero(todo)
    invalid, first_restart, first_batch = 0, 0, 0
    if partial is not None and partial.is_file():
        with np.load(partial) as f:
            if f["col"].shape == col.shape and np.array_equal(f["col"] != NOT_ATTACKED, todo):
                col, alive = f["col"].copy(), f["alive"].copy()
                invalid, first_restart, first_batch = (int(f["invalid"]), int(f["restart"]),
                                                       int(f["batch"]))
                layout = layout if _layout_in(f) == layout else "mixed"
    for restart in range(first_restart, restarts):
        if alive.size == 0:
            break
        chunks = [alive[i:i + batch_size] for i in range(0, alive.size, batch_size)]
        label = desc + (f" (restart {restart + 1}/{restarts})" if restarts > 1 else "")
        start = first_batch if restart == first_restart else 0
        bar = tqdm(chunks[start:], desc=label, disable=not progress, leave=False,
                   dynamic_ncols=True, total=len(chunks), initial=start)
        for b, idx in enumerate(bar, start=start):
            torch.manual_seed(batch_seed(*seed_key, restart, b))
            index = torch.from_numpy(idx)
            x = to_float01(images[index], device)
            y = labels[index].to(device)
            x_adv = attack(model, x, y)
            if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
                raise EvaluationError(
                    f"{desc}: the attack returned {getattr(x_adv, 'shape', type(x_adv))} for a "
                    f"batch of shape {tuple(x.shape)}"
                )
            x_adv = x_adv.to(device=device, dtype=x.dtype)
            ok = valid_points(x, x_adv, threat)
            broken = (~correct_on(model, x_adv, y)) & ok
            invalid += int((~ok).sum())
            col[idx[broken.cpu().numpy()]] = BROKEN
            if partial is not None and (b + 1 < len(chunks) or restart + 1 < restarts):
                last = b + 1 == len(chunks)  # the next restart attacks what is still robust
                write_npz(partial, col=col,
                          alive=alive[col[alive] == ROBUST] if last else alive,
                          restart=restart + 1 if last else restart,
                          batch=0 if last else b + 1, invalid=invalid, **_layout_field(layout))
        alive = alive[col[alive] == ROBUST]
    return col, invalid, layout


def _layout_in(f: Any) -> str | None:
    """The memory layout an attack's file (or its partial file) records; None before layouts
    were recorded."""
    return str(f["layout"]) if "layout" in f.files else None


def _machine_in(f: Any) -> dict[str, Any] | None:
    """The machine an attack's file records (:func:`mutualat.device.machine_record`); None
    before machines were recorded."""
    return json.loads(str(f["machine"])) if "machine" in f.files else None


def _layout_field(layout: str | None) -> dict[str, str]:
    return {"layout": layout} if layout else {}


def _saved_column(path: Path, todo: np.ndarray, name: str,
                  attack: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The outcome column and run facts a finished attack saved in ``path``, if it attacked
    exactly ``todo``, the examples the columns before it leave to it now. Otherwise an
    earlier column was computed again since (its file removed, or another run's), and the
    column would count examples it never attacked as not robust: the file is set aside as
    ``<attack>.stale.npz`` (or ``.stale-2.npz`` and on; nothing is deleted), None is
    returned and the attack runs again."""
    with np.load(path) as f:
        col = f["outcome"]
        facts = {"seconds": float(f["seconds"]), "invalid": int(f["invalid"]),
                 "attacked": int(f["attacked"]), "layout": _layout_in(f), "machine": _machine_in(f)}
    attacked = col != NOT_ATTACKED
    if attacked.shape == todo.shape and np.array_equal(attacked, todo):
        return col, facts
    stale, k = path.with_name(f"{attack}.stale.npz"), 1
    while stale.exists():  # set aside before: keep that one too
        k += 1
        stale = path.with_name(f"{attack}.stale-{k}.npz")
    path.replace(stale)
    logger.warning(f"{name}: {attack}: its saved column attacked {int(attacked.sum())} examples "
                   f"where the columns before it now leave {int(todo.sum())}; set aside as "
                   f"{stale.name}, attacking again")
    return None


def model_outcomes(
    name: str,
    model: nn.Module,
    suite: Suite,
    images: torch.Tensor,
    labels: torch.Tensor,
    out: Path,
    batch_size: int,
    device: torch.device,
    seed: int,
    progress: bool,
    layout: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, Any]]]:
    """Clean flags, the outcome matrix and per-attack run facts (seconds, points outside the
    threat, examples attacked, layout, machine) of one model (resuming). ``layout``
    (:mod:`.layout`'s name of the memory layout the model runs in) is recorded with each
    attack it runs, as is the machine that ran it; an attack recorded before either was has
    None for it."""
    mdir = out / name
    clean_file = mdir / "clean.npz"
    if clean_file.is_file():
        with np.load(clean_file) as f:
            clean = f["clean"].astype(bool)
    else:
        clean = clean_correct(model, images, labels, batch_size, device)
        write_npz(clean_file, clean=clean)
    n, specs = len(labels), suite.attacks
    outcome = np.full((n, len(specs)), NOT_ATTACKED, dtype=np.int8)
    threats = [s.threat for s in specs]
    facts: dict[str, dict[str, Any]] = {}
    for j, spec in enumerate(specs):
        path = mdir / "attacks" / f"{spec.id}.npz"
        if suite.per_attack == "cumulative":
            todo = candidates(clean, outcome[:, :j], threats[:j], spec.threat)
        else:
            todo = clean.copy()
        saved = _saved_column(path, todo, name, spec.id) if path.is_file() else None
        if saved is not None:
            outcome[:, j], facts[spec.id] = saved
            continue
        attack = suite.build(spec)
        tick = time.perf_counter()
        partial = path.with_name(f"{spec.id}.partial.npz")
        col, invalid, ran_in = run_attack(
            model, attack, suite.threat_of(spec), images, labels, todo, spec.restarts,
            batch_size, device, (seed, name, spec.id), progress, desc=f"{name} {spec.id}",
            partial=partial, layout=layout,
        )
        seconds = time.perf_counter() - tick
        outcome[:, j] = col
        machine = machine_record(device)  # the one that finished it, if it was resumed
        facts[spec.id] = {"seconds": seconds, "invalid": invalid, "attacked": int(todo.sum()),
                          "layout": ran_in, "machine": machine}
        write_npz(path, outcome=col, seconds=seconds, invalid=invalid, attacked=int(todo.sum()),
                  machine=json.dumps(machine), **_layout_field(ran_in))
        partial.unlink(missing_ok=True)
        same = [k for k in range(j + 1) if threats[k] == spec.threat]
        acc = float((clean & (outcome[:, same] == ROBUST).all(axis=1)).mean())
        logger.info(f"{name}: {spec.id}: broke {int((col == BROKEN).sum())} of {int(todo.sum())} "
                    f"attacked; {spec.threat} accuracy so far {acc:.2%} ({seconds:.1f} s)")
    write_npz(
        mdir / "correct.npz",
        attacks=np.array([s.id for s in specs]), threats=np.array(threats),
        outcome=outcome, robust=outcome == ROBUST, clean=clean, labels=labels.numpy(),
    )
    return clean, outcome, facts
