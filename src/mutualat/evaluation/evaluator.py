"""The evaluator: every attack of a suite on every model, per-example worst case, resumable.

``evaluate(models, suite, images, labels, out_dir, ...)`` keeps, per model, an outcome
matrix ``(N, A)`` (see :mod:`mutualat.evaluation.worst_case` for its codes): an attack runs
only on the examples that are clean-correct and, in the suite's default ``cumulative`` mode,
not yet broken by an earlier attack *of the same threat type* (an example once broken stays
broken, as AutoAttack's robust flags); in ``standalone`` mode on every clean-correct example.
Restarts attack only what the earlier restarts left. Per-type accuracy, R_avg and R_worst
are exact in both modes: R_worst is the per-example worst case over all attacks of all
types, computed from the matrix, never an average.

Every returned point is checked: finite, in [0,1], inside the attack's threat model (up to
a rounding tolerance). A point that fails counts as a failed attack (the example stays
robust) and the summary warns, so a buggy attack can never lower an accuracy.

Folder layout (everything needed to recompute any table)::

    DIR/manifest.json             what is evaluated (suite, seed, batch size, data and model
                                  fingerprints); a rerun must match it
    DIR/<model>/clean.npz         clean correctness (N,)
    DIR/<model>/attacks/<id>.npz  one attack's outcome column, written atomically when the
                                  attack finishes: the unit of resumption
    DIR/<model>/correct.npz       attacks, threats, outcome (N, A) int8, robust (N, A) bool,
                                  clean (N,), labels (N,)
    DIR/checks.json               gradient-masking measurements (when enabled)
    DIR/summary.json              all numbers (schema: :func:`build_summary`)

A rerun with the same arguments skips every finished (model, attack) and writes the same
numbers: each batch's randomness is seeded from (seed, model, attack, restart, batch).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import os
import platform
import re
import time
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mutualat.errors import ConfigError, MutualatError
from mutualat.evaluation.checks import CheckConfig, run_checks, suite_warnings
from mutualat.evaluation.suite import Suite, Threat
from mutualat.evaluation.worst_case import BROKEN, NOT_ATTACKED, ROBUST, accuracy_report, candidates
from mutualat.models.ensemble import Ensemble
from mutualat.models.layers import Preprocessed
from mutualat.train.logger import log_summary
from mutualat.train.precision import AutocastModel

FORMAT_VERSION = 1
ENSEMBLE = "ensemble"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


logger = logging.getLogger(__name__)


class EvaluationError(MutualatError):
    """An evaluation folder that belongs to another evaluation, or inputs that do not fit."""


# --------------------------------------------------------------------------------------------
# Small helpers: files, fingerprints, environment
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, payload: bytes) -> None:
    from mutualat.train.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, payload)


def _write_json(path: Path, data: Any) -> None:
    _atomic_write(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def _write_npz(path: Path, **arrays: Any) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _atomic_write(path, buffer.getvalue())


def fingerprint_model(model: nn.Module) -> str:
    """sha256 of the model's state (names, shapes, values): changes when the weights do."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        t = value.detach().to("cpu").contiguous()
        digest.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def fingerprint_data(images: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in (images, labels):
        t = t.detach().to("cpu").contiguous()
        digest.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def batch_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed from the run seed and a (model, attack, restart, batch) key."""
    return zlib.crc32("/".join(str(p) for p in (seed, *parts)).encode()) & 0x7FFFFFFF


def hardware_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {"device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(),
                            "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def versions() -> dict[str, str]:
    import mutualat

    return {"mutualat": mutualat.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


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
    x = x.to(device)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


# --------------------------------------------------------------------------------------------
# The run folder
# --------------------------------------------------------------------------------------------


def _check_manifest(out: Path, identity: dict[str, Any]) -> None:
    path = out / "manifest.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{path} is corrupt ({exc}); delete the folder or choose another --out") from None
        if saved.get("identity") != identity:
            old = saved.get("identity") or {}
            differs = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            raise EvaluationError(
                f"{out} holds another evaluation (it differs in: {', '.join(differs)}); "
                "use a new --out, or delete the folder to start over (nothing was overwritten)"
            )
        return
    if out.exists() and any(p.name != "summary.json" for p in out.iterdir()):
        raise EvaluationError(f"{out} exists and is not an evaluation folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"format_version": FORMAT_VERSION,
                       "started": utc_now(), "identity": identity})


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Running one attack on one model
# --------------------------------------------------------------------------------------------


def _valid(x: torch.Tensor, x_adv: torch.Tensor, threat: Threat) -> torch.Tensor:
    """``(B,)`` bool: ``x_adv`` is finite, in [0,1] and inside the threat's ball (with a
    tolerance for float rounding)."""
    from mutualat.attacks import make_threat

    flat = x_adv.flatten(1)
    ok = torch.isfinite(flat).all(dim=1) & (flat >= -1e-6).all(dim=1) & (flat <= 1 + 1e-6).all(dim=1)
    if threat.norm is not None and threat.eps is not None:
        norms = make_threat(threat.norm, threat.eps).norm_of((x_adv - x).double())
        ok &= norms <= threat.eps * (1 + 1e-5) + 1e-6
    return ok


@torch.no_grad()
def correct_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from mutualat.attacks import attack_mode

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
) -> tuple[np.ndarray, int]:
    """Run ``attack`` ``restarts`` times on the examples where ``todo`` is True.

    Returns the outcome column ``(N,)`` (``NOT_ATTACKED`` outside ``todo``) and the number of
    invalid points returned (counted as failures). Each restart only attacks what is still
    robust; each batch is seeded from ``seed_key + (restart, batch)``.

    ``partial``: a file where the progress is saved after every batch (the column so far,
    the restart and batch reached, the examples that restart attacks); if it exists, the
    attack continues from there. Since every batch has its own seed, an interrupted and
    resumed attack gives the same column as an uninterrupted one, and a long attack (C&W,
    PGD-1000) loses at most one batch to an interruption.
    """
    from tqdm import tqdm

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
            ok = _valid(x, x_adv, threat)
            broken = (~correct_on(model, x_adv, y)) & ok
            invalid += int((~ok).sum())
            col[idx[broken.cpu().numpy()]] = BROKEN
            if partial is not None and (b + 1 < len(chunks) or restart + 1 < restarts):
                last = b + 1 == len(chunks)  # the next restart attacks what is still robust
                _write_npz(partial, col=col,
                           alive=alive[col[alive] == ROBUST] if last else alive,
                           restart=restart + 1 if last else restart,
                           batch=0 if last else b + 1, invalid=invalid)
        alive = alive[col[alive] == ROBUST]
    return col, invalid


def _model_outcomes(
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
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, Any]]]:
    """Clean flags, the outcome matrix and per-attack run facts of one model (resuming)."""
    mdir = out / name
    clean_file = mdir / "clean.npz"
    if clean_file.is_file():
        with np.load(clean_file) as f:
            clean = f["clean"].astype(bool)
    else:
        clean = clean_correct(model, images, labels, batch_size, device)
        _write_npz(clean_file, clean=clean)
    n, specs = len(labels), suite.attacks
    outcome = np.full((n, len(specs)), NOT_ATTACKED, dtype=np.int8)
    threats = [s.threat for s in specs]
    facts: dict[str, dict[str, Any]] = {}
    for j, spec in enumerate(specs):
        path = mdir / "attacks" / f"{spec.id}.npz"
        if path.is_file():
            with np.load(path) as f:
                outcome[:, j] = f["outcome"]
                facts[spec.id] = {"seconds": float(f["seconds"]), "invalid": int(f["invalid"]),
                                  "attacked": int(f["attacked"])}
            continue
        if suite.per_attack == "cumulative":
            todo = candidates(clean, outcome[:, :j], threats[:j], spec.threat)
        else:
            todo = clean.copy()
        attack = suite.build(spec)
        tick = time.perf_counter()
        partial = path.with_name(f"{spec.id}.partial.npz")
        col, invalid = run_attack(
            model, attack, suite.threat_of(spec), images, labels, todo, spec.restarts,
            batch_size, device, (seed, name, spec.id), progress, desc=f"{name} {spec.id}",
            partial=partial,
        )
        seconds = time.perf_counter() - tick
        outcome[:, j] = col
        facts[spec.id] = {"seconds": seconds, "invalid": invalid, "attacked": int(todo.sum())}
        _write_npz(path, outcome=col, seconds=seconds, invalid=invalid, attacked=int(todo.sum()))
        partial.unlink(missing_ok=True)
        same = [k for k in range(j + 1) if threats[k] == spec.threat]
        acc = float((clean & (outcome[:, same] == ROBUST).all(axis=1)).mean())
        logger.info(f"{name}: {spec.id}: broke {int((col == BROKEN).sum())} of {int(todo.sum())} "
                    f"attacked; {spec.threat} accuracy so far {acc:.2%} ({seconds:.1f} s)")
    _write_npz(
        mdir / "correct.npz",
        attacks=np.array([s.id for s in specs]), threats=np.array(threats),
        outcome=outcome, robust=outcome == ROBUST, clean=clean, labels=labels.numpy(),
    )
    return clean, outcome, facts


# --------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------


def build_summary(
    suite: Suite,
    results: Mapping[str, tuple[np.ndarray, np.ndarray, dict]],
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    data_info: Mapping[str, Any] | None,
    model_info: Mapping[str, Mapping[str, Any]] | None,
    checks: Mapping[str, Any] | None,
    started: str | None,
    amp: str = "off",
) -> dict[str, Any]:
    """The ``summary.json`` record. Accuracies are fractions in [0,1]::

        {"format_version": 1, "date", "started", "seed", "batch_size", "n_examples",
         "per_attack": "cumulative" | "standalone",
         "suite": {name, description, per_attack, threats: {t: {norm, eps}}, attacks: [...]},
         "data": {dataset, split, n, subset_seed, ...} (what the caller passed),
         "versions": {mutualat, torch, numpy, python}, "hardware": {device, cpu, gpu?, ...},
         "models": {name: {"info": {...model file metadata...},
                           "clean", "r_avg", "r_worst", "threats": {t: acc},
                           "attacks": {id: {name, threat, restarts, params, eps, accuracy,
                                            attacked, broken, invalid, seconds}},
                           "correct_file": "<name>/correct.npz"}},
         "checks": {...} or null, "precision": "fp32" | "bf16 autocast", "warnings": [...]}
    """
    specs = suite.attacks
    ids, threats = [s.id for s in specs], [s.threat for s in specs]
    # The radius (or strength) each attack really used: a threat without eps leaves the
    # attack's own default (e.g. the calibrated strength of Fog), recorded here.
    effective_eps = {s.id: _json_number(getattr(suite.build(s), "eps", None)) for s in specs}
    models: dict[str, Any] = {}
    warnings: list[str] = []
    n = 0
    for name, (clean, outcome, facts) in results.items():
        n = len(clean)
        report = accuracy_report(clean, outcome, ids, threats, suite.per_attack)
        attacks = {}
        for j, spec in enumerate(specs):
            fact = facts.get(spec.id, {})
            attacks[spec.id] = {
                "name": spec.name, "threat": spec.threat, "restarts": spec.restarts,
                "params": spec.params, "eps": effective_eps[spec.id],
                "accuracy": report["attacks"][spec.id],
                "attacked": fact.get("attacked"), "broken": int((outcome[:, j] == BROKEN).sum()),
                "invalid": fact.get("invalid", 0), "seconds": fact.get("seconds"),
            }
            if fact.get("invalid"):
                warnings.append(
                    f"{name}: {spec.id} returned {fact['invalid']} points outside its threat model "
                    "or [0,1] (or not finite); they were counted as failed attacks"
                )
        models[name] = {
            "info": dict((model_info or {}).get(name, {})),
            "clean": report["clean"], "r_avg": report["r_avg"], "r_worst": report["r_worst"],
            "threats": report["threats"], "attacks": attacks,
            "correct_file": f"{name}/correct.npz",
        }
        warnings += suite_warnings(name, [s.to_dict() for s in specs], outcome, clean, suite.per_attack)
    if checks:
        warnings += list(checks.get("warnings", []))
    if amp == "bf16":
        warnings.append("the models ran under bf16 autocast (eval --amp bf16): lower-precision "
                        "gradients can weaken gradient attacks; confirm a claim in fp32")
    return {
        "format_version": FORMAT_VERSION,
        "date": utc_now(),
        "started": started,
        "seed": seed,
        "batch_size": batch_size,
        "n_examples": n,
        "per_attack": suite.per_attack,
        "suite": suite.to_dict(),
        "data": dict(data_info or {}),
        "versions": versions(),
        "hardware": hardware_info(device),
        "models": models,
        "checks": dict(checks) if checks else None,
        "precision": "bf16 autocast" if amp == "bf16" else "fp32",
        "warnings": warnings,
    }


def _json_number(v: Any) -> Any:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def summary_table(summary: Mapping[str, Any]) -> str:
    """A Markdown table of a summary: one row per model, accuracies in percent."""
    from mutualat.report.tables import markdown_table

    suite = summary["suite"]
    ids = [a["id"] for a in suite["attacks"]]
    types = list(suite["threats"])
    multi = len(types) > 1
    header = ["model", "clean"] + ids + ([f"{t} (worst)" for t in types] + ["R_avg"] if multi else []) \
        + ["R_worst"]
    rows = []
    for name, m in summary["models"].items():
        row = [name, 100 * m["clean"]] + [100 * m["attacks"][i]["accuracy"] for i in ids]
        if multi:
            row += [100 * m["threats"][t] for t in types] + [100 * m["r_avg"]]
        rows.append(row + [100 * m["r_worst"]])
    return markdown_table(header, rows)


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------


def evaluate(
    models: Mapping[str, nn.Module],
    suite: Suite,
    images: Any,
    labels: Any,
    out_dir: str | os.PathLike,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    seed: int = 0,
    ensemble: bool = False,
    *,
    checks: bool | CheckConfig = True,
    progress: bool = True,
    data_info: Mapping[str, Any] | None = None,
    model_info: Mapping[str, Mapping[str, Any]] | None = None,
    amp: str = "off",
    preprocessing: tuple[Sequence[float], Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Evaluate ``models`` (name -> module mapping [0,1] images to logits) under ``suite``.

    Args:
        images: ``(N, C, H, W)`` uint8 (divided by 255 here) or float in [0,1]; tensor or array.
        labels: ``(N,)`` int.
        out_dir: the evaluation folder (see the module docstring); reused for resumption.
        ensemble: also evaluate the mean of the models' softmax outputs, named "ensemble".
        checks: run the gradient-masking checks (True, False, or a :class:`CheckConfig`).
        data_info, model_info: recorded in the summary as they are (dataset name, split,
            model file metadata...).
        amp: "off" (default): every forward and backward in fp32. "bf16": the models run
            under bf16 autocast (the perturbation stays fp32); faster where the processor
            has bf16 units, but a lower-precision gradient can weaken an attack and make a
            model look more robust than it is. The summary records it (``precision``).
        preprocessing: ``(mean, std)`` per channel, in [0,1] units, for models that expect
            normalized input (normalization done by the data pipeline, as torchvision's
            ``Normalize``): each model is wrapped in :class:`~mutualat.models.Preprocessed`,
            so attacks still perturb [0,1] pixels and radii mean what the suite says.

    Returns the summary (also written to ``out_dir/summary.json``; :func:`summary_table` gives
    its table) and logs its warnings. The models are moved to ``device``; the global torch random state is restored
    afterwards. The unit of resumption is one (model, attack): an attack interrupted halfway
    runs again from its start.
    """
    from mutualat.device import resolve_device

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not models:
        raise ConfigError("evaluate needs at least one model")
    if amp not in ("off", "bf16"):
        raise ConfigError(f"amp must be off or bf16, got {amp!r}")
    suite.validate()
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    x_all, y_all = as_tensors(images, labels)
    if preprocessing is not None:
        mean, std = _preprocessing(preprocessing)
        models = {k: Preprocessed(m, mean, std) for k, m in models.items()}
    named: dict[str, nn.Module] = {}
    for name, model in models.items():
        if not isinstance(name, str) or not _NAME.match(name) or (name == ENSEMBLE and ensemble):
            raise ConfigError(
                f"model name {name!r} is not usable (letters, digits and ._+-; 'ensemble' is "
                "taken by --ensemble)"
            )
        named[name] = model.to(dev)
    if ensemble:
        named[ENSEMBLE] = Ensemble(list(named.values()))
    if amp == "bf16":
        named = {k: AutocastModel(m) for k, m in named.items()}

    # What decides the numbers; a rerun must match it (the description is only prose).
    suite_identity = {k: v for k, v in suite.to_dict().items() if k != "description"}
    identity = {
        "suite": suite_identity, "seed": seed, "batch_size": batch_size,
        **({"precision": "bf16"} if amp == "bf16" else {}),  # fp32 folders stay valid
        "n_examples": len(y_all), "data": fingerprint_data(x_all, y_all),
        "models": {k: fingerprint_model(m) for k, m in named.items()},
    }
    out = Path(out_dir)
    _check_manifest(out, identity)
    started = json.loads((out / "manifest.json").read_text()).get("started")

    cuda = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        results = {
            name: _model_outcomes(name, model, suite, x_all, y_all, out, batch_size, dev, seed, progress)
            for name, model in named.items()
        }
        check_record = None
        if checks:
            check_record = _checks(named, suite, x_all, y_all, out, batch_size, dev, seed,
                                   checks if isinstance(checks, CheckConfig) else CheckConfig())
    summary = build_summary(
        suite, results, seed=seed, batch_size=batch_size, device=dev, data_info=data_info,
        model_info=model_info, checks=check_record, started=started, amp=amp,
    )
    _write_json(out / "summary.json", summary)
    log_summary(out, summary)  # TensorBoard / W&B, when there
    for w in summary["warnings"]:
        logger.warning(w)
    return summary


def _preprocessing(value: Any) -> tuple[list[float], list[float]]:
    try:
        mean, std = value
        return [float(v) for v in mean], [float(v) for v in std]
    except (TypeError, ValueError):
        raise ConfigError(f"preprocessing must be (mean, std), two sequences of numbers; got {value!r}") from None


def _checks(named: Mapping[str, nn.Module], suite: Suite, x: torch.Tensor, y: torch.Tensor,
            out: Path, batch_size: int, device: torch.device, seed: int,
            config: CheckConfig) -> dict[str, Any]:
    path = out / "checks.json"
    from dataclasses import asdict

    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("config") == asdict(config):
            return saved
    lp = list(suite.lp_threats().values())
    threat = next((t for t in lp if t.norm == "linf"), lp[0] if lp else None)
    torch.manual_seed(batch_seed(seed, "checks"))
    record = run_checks(
        named, x, y, threat.norm if threat else None, threat.eps if threat else None,
        batch_size, device, config, transfer_models=[k for k in named if k != ENSEMBLE],
    )
    _write_json(path, record)
    return record
