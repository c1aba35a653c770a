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
    DIR/summary.json              all numbers (schema: :func:`.summary.build_summary`)
    DIR/.lock                     held while a process evaluates into the folder: a second
                                  one is refused (:func:`mutualat.files.hold_lock`)

A rerun with the same arguments skips every finished (model, attack) and writes the same
numbers: each batch's randomness is seeded from (seed, model, attack, restart, batch).

This module is the entry point; the parts it joins live beside it: :mod:`.attack_loop`
(one attack on one model, batch by batch, and the per-model outcome matrix),
:mod:`.records` (the folder's files, fingerprints, manifest and environment record) and
:mod:`.summary` (``summary.json`` and its table).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from mutualat.device import resolve_device
from mutualat.errors import ConfigError
from mutualat.files import hold_lock
from mutualat.evaluation.attack_loop import as_tensors, batch_seed, model_outcomes, to_float01
from mutualat.evaluation.checks import CheckConfig, run_checks
from mutualat.evaluation.layout import check_choice, laid_out
from mutualat.evaluation.records import (
    check_manifest, evaluation_identity, fingerprint_model, write_json,
)
from mutualat.evaluation.suite import Suite
from mutualat.evaluation.summary import build_summary
from mutualat.models.ensemble import Ensemble
from mutualat.models.layers import Preprocessed
from mutualat.train.logger import log_summary
from mutualat.train.precision import AutocastModel, ieee_fp32

ENSEMBLE = "ensemble"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


logger = logging.getLogger(__name__)


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
    channels_last: str = "auto",
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
        amp: "off" (default): every forward and backward in fp32 (IEEE: on CUDA, TF32 is
            off while the evaluation runs). "bf16": the models run
            under bf16 autocast (the perturbation stays fp32); faster where the processor
            has bf16 units, but a lower-precision gradient can weaken an attack and make a
            model look more robust than it is. The summary records it (``precision``).
        preprocessing: ``(mean, std)`` per channel, in [0,1] units, for models that expect
            normalized input (normalization done by the data pipeline, as torchvision's
            ``Normalize``): each model is wrapped in :class:`~mutualat.models.Preprocessed`,
            so attacks still perturb [0,1] pixels and radii mean what the suite says.
        channels_last: the memory layout the models run in, "auto" (channels_last on the
            CPU, where it is faster), "on" or "off"; see :mod:`.layout`. Both are fp32 with
            the same weights; each attack's record says which one it ran in.

    Returns the summary (also written to ``out_dir/summary.json``; :func:`summary_table` gives
    its table) and logs its warnings. The models are moved to ``device`` (a memory
    layout chosen here is undone on return); the global torch random state is restored
    afterwards. A rerun skips every finished (model, attack), and an attack interrupted
    halfway continues from its last finished batch (see :func:`.attack_loop.run_attack`).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not models:
        raise ConfigError("evaluate needs at least one model")
    if amp not in ("off", "bf16"):
        raise ConfigError(f"amp must be off or bf16, got {amp!r}")
    check_choice(channels_last)
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

    # What decides the numbers; a rerun must match it.
    identity = {**evaluation_identity(suite.to_dict(), seed, batch_size, x_all, y_all, amp),
                "models": {k: fingerprint_model(m) for k, m in named.items()}}
    out = Path(out_dir)
    check_manifest(out, identity)
    started = json.loads((out / "manifest.json").read_text()).get("started")
    # One process at a time: a second would run the same attacks again beside the first.
    lock = hold_lock(out, f"evaluation folder {out} is in use by another evaluation; "
                     "wait for it to end or choose another --out (nothing was changed)")
    with lock or contextlib.nullcontext():
        cuda = [dev.index or 0] if dev.type == "cuda" else []
        # After the identity: a layout changes neither a model's weights nor its fingerprint.
        # fp32 means IEEE fp32 on a GPU too, not TF32 (bf16 autocast sets its own precision).
        fp32 = ieee_fp32(dev) if amp == "off" else contextlib.nullcontext()
        with torch.random.fork_rng(devices=cuda), fp32, \
                laid_out(named.items(), to_float01(x_all[:2], dev), channels_last, dev) as laid:
            results = {
                name: model_outcomes(name, laid[id(model)][0], suite, x_all, y_all, out, batch_size,
                                     dev, seed, progress, layout=laid[id(model)][1])
                for name, model in named.items()
            }
            check_record = None
            if checks:
                run_models = {name: laid[id(model)][0] for name, model in named.items()}
                check_record = _checks(run_models, suite, x_all, y_all, out, batch_size, dev, seed,
                                       checks if isinstance(checks, CheckConfig) else CheckConfig())
        summary = build_summary(
            suite, results, seed=seed, batch_size=batch_size, device=dev, data_info=data_info,
            model_info=model_info, checks=check_record, started=started, amp=amp,
        )
        write_json(out / "summary.json", summary)
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
    # Every lp threat of the suite, its l-inf one first (the only one checked before
    # 2026-12-02, whose numbers a record keeps at its top level).
    lp = suite.lp_threats()
    first = next((k for k, t in lp.items() if t.norm == "linf"), next(iter(lp), None))
    threat = lp.get(first)
    others = {k: (t.norm, t.eps) for k, t in lp.items() if k != first}
    checked = [{"norm": threat.norm, "eps": threat.eps} if threat else {"norm": None, "eps": None}]
    checked += [{"norm": norm, "eps": eps} for norm, eps in others.values()]
    path = out / "checks.json"
    if path.is_file():  # measured before with the same settings and threats: kept
        saved = json.loads(path.read_text())
        if saved.get("config") == asdict(config) and \
                saved.get("threats", [saved.get("threat")]) == checked:
            return saved
    torch.manual_seed(batch_seed(seed, "checks"))
    record = run_checks(
        named, x, y, threat.norm if threat else None, threat.eps if threat else None,
        batch_size, device, config, transfer_models=[k for k in named if k != ENSEMBLE],
        other_threats=others,
    )
    write_json(path, record)
    return record
