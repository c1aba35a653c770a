"""Multi-run experiments built on the trainer: reuse/resume, the alpha search, KD scenarios.

Every run lands in its own folder; a finished run (``results.json`` present) is reused and an
interrupted one resumed, so an experiment can be stopped and restarted at any point.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from mutualat.config import RunConfig, load_config
from mutualat.errors import ConfigError
from mutualat.methods.mat_mp import GENERALIST
from mutualat.methods.scenarios import scenario_configs, stage1_model_file
from mutualat.report.paper_plots import plot_alpha_curve
from mutualat.train import Trainer
from mutualat.files import atomic_write_bytes
from mutualat.train.logger import read_metrics
from mutualat.train.run_dir import config_difference, run_inits

logger = logging.getLogger(__name__)


def run_or_reuse(cfg: RunConfig, run_dir: Path, label: str | None = None) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` unless it already finished there; returns its results."""
    run_dir = Path(run_dir)
    label = label or run_dir.name
    done = run_dir / "results.json"
    if done.is_file():
        differs = config_difference(load_config(run_dir / "config.yaml"), cfg, run_inits(run_dir))
        if differs:
            raise ConfigError(
                f"{label}: {run_dir} holds a finished run of another config (it differs in "
                f"{differs}); choose another output folder (nothing was overwritten)"
            )
        logger.info(f"{label}: reusing the finished run in {run_dir}")
    else:
        # A folder with a config was started before: resume it (from its checkpoint, or from
        # scratch if it stopped before the first one); the trainer checks the config.
        resume = (run_dir / "config.yaml").is_file()
        logger.info(f"{label}: {'resuming' if resume else 'training'} in {run_dir}")
        Trainer(cfg, run_dir, resume=resume).fit()
    return json.loads(done.read_text())


def last_validation_pgd(run_dir: Path, role: str | None = None) -> float:
    """The last epoch's validation PGD accuracy (for several threat types, per example the
    worst over them): of the member ``role``, or the mean over the trained members."""
    epochs = [r for r in read_metrics(run_dir) if r["event"] == "epoch"]
    if not epochs:
        raise ConfigError(f"{run_dir} has no validation record; was data.val_fraction 0?")
    values = {k.split("/", 1)[1]: v for k, v in epochs[-1].items()
              if k.startswith("val_pgd/") and k.count("/") == 1}
    if not values:
        raise ConfigError(f"{run_dir} has no validation PGD accuracy (data.val_fraction is 0)")
    if role is not None:
        if role not in values:
            raise ConfigError(f"{run_dir} has no validation PGD accuracy of {role!r} "
                              f"(members: {', '.join(values)})")
        return values[role]
    return sum(values.values()) / len(values)


def alpha_search(base: RunConfig, alphas: Sequence[float], out: Path, final: bool = True) -> dict:
    """The paper's alpha selection (Sec. 3.2.6, Fig. 3).

    Trains ``base`` (a ``mat`` or ``mat-mp`` config) once per alpha on the training split
    minus the held-out validation fraction, picks the alpha with the highest validation PGD
    accuracy of the last epoch (never the test split): for MAT the mean over the cohort, for
    MAT-MP the generalist's (the model it delivers), per example the worst over the threat
    types. Writes ``alpha_curve.json`` and ``alpha_curve.png``, then (``final``) retrains
    with the chosen alpha on the full training set (``data.val_fraction = 0``) in
    ``out/final``.
    """
    if base.method.name not in ("mat", "mat-mp"):
        raise ConfigError(f"alpha search tunes MAT's alpha; the config's method is {base.method.name!r}")
    if base.data.val_fraction <= 0:
        raise ConfigError("alpha search needs a validation split: data.val_fraction > 0 (the paper uses 0.2)")
    if not alphas:
        raise ConfigError("alpha search needs at least one alpha")
    out = Path(out)
    role = GENERALIST if base.method.name == "mat-mp" else None
    curve: dict[str, float] = {}
    for alpha in alphas:
        cfg = copy.deepcopy(base)
        cfg.method.params = {**cfg.method.params, "alpha": float(alpha)}
        cfg.eval.test = True  # results.json marks the run as finished; test numbers are not used here
        run_dir = out / f"alpha-{alpha:g}"
        run_or_reuse(cfg, run_dir, label=f"alpha={alpha:g}")
        curve[f"{alpha:g}"] = last_validation_pgd(run_dir, role)
    chosen = max(curve, key=lambda a: (curve[a], -float(a)))
    summary = {"alpha_curve": curve, "chosen_alpha": float(chosen),
               "criterion": f"validation PGD-{base.eval.pgd_steps} accuracy, last epoch, "
                            + ("the generalist's, worst over the threat types" if role else "cohort mean")}
    atomic_write_bytes(out / "alpha_curve.json", json.dumps(summary, indent=2).encode())
    plot_alpha_curve({float(a): v for a, v in curve.items()}, out / "alpha_curve.png")
    logger.info(f"alpha curve (validation PGD): {curve}; chosen alpha = {chosen}")
    if final:
        cfg = copy.deepcopy(base)
        cfg.method.params = {**cfg.method.params, "alpha": float(chosen)}
        cfg.data.val_fraction = 0.0
        summary["final"] = run_or_reuse(cfg, out / "final", label=f"final alpha={chosen}")
    return summary


def run_scenario(name: str, base: RunConfig, out: Path) -> dict[str, Any]:
    """One of the four KD scenarios (Sec. 3.2.5): its stages in ``out/stage1``, ``out/stage2``."""
    out = Path(out)
    stage1_dir = out / "stage1"
    configs = scenario_configs(name, base, stage1_model_file(stage1_dir))
    if len(configs) == 1:
        results = run_or_reuse(configs[0], out, label=name)
    else:
        run_or_reuse(configs[0], stage1_dir, label=f"{name} stage 1 (h1 alone)")
        results = run_or_reuse(configs[1], out / "stage2", label=f"{name} stage 2 (h2 learns from h1)")
    # What `mutualat report` reads to place these runs in the scenario plot (Fig. 2),
    # whatever the folder is called.
    atomic_write_bytes(out / SCENARIO_FILE, json.dumps({"scenario": name}).encode())
    return results


SCENARIO_FILE = "scenario.json"


def recorded_scenario(run_dir: Path) -> str | None:
    """The KD scenario a run folder (or the scenario folder above it) belongs to, if any."""
    for folder in (Path(run_dir), Path(run_dir).parent):
        path = folder / SCENARIO_FILE
        if path.is_file():
            try:
                return json.loads(path.read_text()).get("scenario")
            except (OSError, json.JSONDecodeError, AttributeError):
                return None
    return None
