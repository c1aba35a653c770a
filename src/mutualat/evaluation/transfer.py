"""Transfer (black-box) attacks: the MAT paper's Table 4.

Adversarial examples are crafted with an attack (default PGD-100, step 0.003, in the source
model's training threat model) on every *source* model and classified by every *target*
model. Entry ``accuracy[source][target]`` is the target's robust accuracy: the fraction of
examples the target classifies correctly both clean and on the source's adversarial image
(the evaluator's convention: a clean mistake is never repaired by an attack). Where a
source is also a target (same name, same weights), the entry is the white-box accuracy:
the diagonal. A black-box entry below the white-box one on the same target is a sign of
gradient masking (Athalye et al. 2018) and is written into ``warnings``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mutualat.attacks import create_attack
from mutualat.device import resolve_device
from mutualat.errors import ConfigError
from mutualat.evaluation.attack_loop import as_tensors, batch_seed, correct_on, to_float01
from mutualat.evaluation.checks import transfer_vs_whitebox
from mutualat.evaluation.layout import check_choice, laid_out
from mutualat.device import hardware_info
from mutualat.evaluation.records import fingerprint_model, utc_now, versions
from mutualat.report.paper_tables import transfer_table
from mutualat.files import atomic_write_bytes
from mutualat.train.precision import ieee_fp32

logger = logging.getLogger(__name__)

#: The paper's Table 4 attack: PGD-100 with step 0.003.
DEFAULT_STEPS = 100
DEFAULT_STEP_SIZE = 0.003


def default_attack(norm: str, eps: float, steps: int = DEFAULT_STEPS,
                   step_size: float | None = DEFAULT_STEP_SIZE, random_start: bool = True):
    """Plain PGD (no early stop: a transfer attack should not stop at the source's boundary)."""
    return create_attack("pgd", norm=norm, eps=eps, steps=steps, step_size=step_size,
                         random_start=random_start, early_stop=False)


def transfer_matrix(
    sources: Mapping[str, nn.Module],
    targets: Mapping[str, nn.Module],
    images: Any,
    labels: Any,
    attacks: Mapping[str, Any] | Any,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    tol: float = 0.01,
    channels_last: str = "auto",
) -> dict[str, Any]:
    """The accuracy matrix of ``targets`` under attacks crafted on ``sources``.

    ``attacks`` is one attack for every source or a mapping source name -> attack (e.g. each
    at its source's training eps). ``images`` (N, C, H, W) uint8 or float in [0,1],
    ``labels`` (N,). Returns ``{"sources", "targets", "clean": {t: acc}, "accuracy":
    {s: {t: acc}}, "white_box": {t: acc}, "attacks": {s: description}, "n_examples",
    "seed", "layout": {model: "channels_last" | "contiguous" | "mixed"}, "warnings", "versions",
    "hardware", "date"}``; accuracies are fractions. ``channels_last`` is the models' memory
    layout as in :func:`~mutualat.evaluation.evaluate` (:mod:`.layout`).
    """
    check_choice(channels_last)
    if not sources or not targets:
        raise ConfigError("transfer needs at least one source and one target model")
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    x_all, y_all = as_tensors(images, labels)
    per_source = dict(attacks) if isinstance(attacks, Mapping) else {s: attacks for s in sources}
    missing = [s for s in sources if s not in per_source]
    if missing:
        raise ConfigError(f"no attack given for source {missing[0]!r}")
    for name in set(sources) & set(targets):
        if sources[name] is not targets[name] and \
                fingerprint_model(sources[name]) != fingerprint_model(targets[name]):
            raise ConfigError(f"source and target {name!r} share a name but not their weights")
    for model in list(sources.values()) + list(targets.values()):
        model.to(dev)
    # A layout chosen here is undone on return: the caller's models stay as they were.
    with laid_out([*sources.items(), *targets.items()], to_float01(x_all[:2], dev),
                  channels_last, dev) as laid:
        layout = {name: laid[id(m)][1] for name, m in {**sources, **targets}.items()}
        clean, robust = _outcomes({name: laid[id(m)][0] for name, m in sources.items()},
                                  {name: laid[id(m)][0] for name, m in targets.items()},
                                  per_source, x_all, y_all, batch_size, dev, seed, progress)
    n = len(y_all)
    accuracy = {s: {t: float((clean[t] & robust[s][t]).mean()) for t in targets} for s in sources}
    white_box = {t: accuracy[t][t] for t in targets if t in sources}
    warnings = transfer_vs_whitebox(accuracy, white_box, tol)
    for w in warnings:
        logger.warning(w)
    return {
        "format_version": 1,
        "date": utc_now(),
        "seed": seed,
        "n_examples": n,
        "layout": layout,
        "sources": list(sources),
        "targets": list(targets),
        "attacks": {s: _describe(per_source[s]) for s in sources},
        "clean": {t: float(clean[t].mean()) for t in targets},
        "accuracy": accuracy,
        "white_box": white_box,
        "warnings": warnings,
        "versions": versions(),
        "hardware": hardware_info(dev),
    }


def _outcomes(sources: Mapping[str, nn.Module], targets: Mapping[str, nn.Module],
              per_source: Mapping[str, Any], x_all: torch.Tensor, y_all: torch.Tensor,
              batch_size: int, dev: torch.device, seed: int, progress: bool):
    """Per target, which examples it classifies right clean; per source and target, which
    it still classifies right after the source's attack."""
    n = len(y_all)
    clean = {t: np.zeros(n, dtype=bool) for t in targets}
    robust = {s: {t: np.zeros(n, dtype=bool) for t in targets} for s in sources}
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), ieee_fp32(dev):
        starts = range(0, n, batch_size)
        for s, (source, model) in enumerate(sources.items()):
            for b, start in enumerate(tqdm(starts, desc=f"transfer from {source}",
                                           disable=not progress, leave=False)):
                x = to_float01(x_all[start:start + batch_size], dev)
                y = y_all[start:start + batch_size].to(dev)
                torch.manual_seed(batch_seed(seed, "transfer", source, b))
                x_adv = per_source[source](model, x, y)
                for target, tmodel in targets.items():
                    if s == 0:
                        clean[target][start:start + batch_size] = correct_on(tmodel, x, y).cpu().numpy()
                    robust[source][target][start:start + batch_size] = (
                        correct_on(tmodel, x_adv, y).cpu().numpy()
                    )
    return clean, robust


def _describe(attack: Any) -> dict[str, Any]:
    fields = {k: v for k, v in vars(attack).items()
              if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}
    return {"class": type(attack).__name__, **fields}


def write_transfer(result: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``transfer.json``, ``transfer.md`` and ``transfer.csv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "transfer.json", (json.dumps(result, indent=2) + "\n").encode())
    table = transfer_table(result)
    atomic_write_bytes(out / "transfer.md", (table.markdown() + "\n").encode())
    atomic_write_bytes(out / "transfer.csv", table.csv().encode())
    return out / "transfer.json"
