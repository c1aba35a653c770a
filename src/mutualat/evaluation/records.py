"""An evaluation folder's files and what they record.

Atomic writes (a killed evaluation never leaves half a file), fingerprints of the data and
the models, the manifest a rerun must match (``manifest.json``: what is evaluated, so that
a folder is never resumed with other models, data or settings), and the versions and
hardware a summary records. The folder's layout is in :mod:`mutualat.evaluation.evaluator`.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mutualat
from mutualat.errors import MutualatError
from mutualat.evaluation.autoattack import PACKAGES as AUTOATTACK
from mutualat.files import atomic_write_bytes

FORMAT_VERSION = 1


class EvaluationError(MutualatError):
    """An evaluation folder that belongs to another evaluation, or inputs that do not fit."""


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def write_npz(path: Path, **arrays: Any) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


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


def evaluation_identity(suite: dict[str, Any], seed: int, batch_size: int,
                        images: torch.Tensor, labels: torch.Tensor,
                        amp: str = "off") -> dict[str, Any]:
    """What decides an evaluation's numbers, but for its models: the suite (as
    ``Suite.to_dict()`` gives it; its description is only prose), the seed and batch size
    (each batch is seeded), the precision (recorded only for bf16: fp32 folders stay valid),
    and the examples by content. A manifest's ``identity`` is this plus ``models``."""
    return {
        "suite": {k: v for k, v in suite.items() if k != "description"},
        "seed": seed, "batch_size": batch_size,
        **({"precision": "bf16"} if amp == "bf16" else {}),
        "n_examples": len(labels), "data": fingerprint_data(images, labels),
    }


def versions() -> dict[str, str]:
    """The versions that can change numbers: ours, torch's, numpy's, Python's and, where
    installed, the AutoAttack that APGD and AutoAttack suites run (fra31's ``autoattack`` or
    the package index's ``pyautoattack``, whichever :mod:`.autoattack` imports first)."""
    found = {"mutualat": mutualat.__version__, "torch": torch.__version__,
             "numpy": np.__version__, "python": platform.python_version()}
    for package in AUTOATTACK:  # in the order :mod:`.autoattack` imports them
        if package not in sys.modules and importlib.util.find_spec(package) is None:
            continue  # (one imported already may have no spec: a stand-in put there)
        try:
            found["autoattack"] = f"{package} {importlib.metadata.version(package)}"
        except importlib.metadata.PackageNotFoundError:  # importable, not installed (a path)
            found["autoattack"] = f"{package} (no installed version)"
        break
    return found


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_manifest(out: Path, identity: dict[str, Any]) -> None:
    """Start the evaluation folder ``out`` with a manifest of ``identity`` (what decides the
    numbers), or check that the folder's manifest records the same: an
    :class:`EvaluationError` names the keys that differ, and nothing is overwritten."""
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
                "evaluate into another folder, or move this one away to start over (nothing "
                "was overwritten)"
            )
        return
    if out.exists() and any(p.name != "summary.json" for p in out.iterdir()):
        raise EvaluationError(f"{out} exists and is not an evaluation folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, {"format_version": FORMAT_VERSION, "started": utc_now(), "identity": identity})
