"""The four knowledge-distillation scenarios of MAT (Liu et al. 2021, Sec. 3.2.5, Fig. 2).

Each scenario is a list of :class:`RunConfig` to run in order (docs/METHOD.md §2):

1. ``rob-rob-online``: h1 and h2 robust, trained together with Eq. 5 (the paper's default).
2. ``rob-rob-offline``: stage 1 trains h1 alone with Eq. 1 (AT with L_C, method ``at``,
   ``loss: lc``, or the cross-entropy where the MAT base sets ``loss: ce``); stage 2 trains
   h2 with Eq. 5 against h1 loaded from stage 1's model file and frozen.
3. ``nat-rob-online``: h1 natural (its ``x_adv`` replaced by ``x``), h2 robust, together.
4. ``nat-rob-offline``: stage 1 trains h1 with L_C (or the base's ``loss``) on clean images
   (method ``at``, ``attack.steps: 0``); stage 2 trains h2 against the frozen h1.

The two-stage scenarios need the path of stage 1's model file before stage 2 can be
described: pass it as ``stage1_model_path`` (for a run folder written by the trainer it is
:func:`stage1_model_file`). Where the stages run (their output folders) is the caller's
business.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from mutualat.config import MethodConfig, ModelConfig, RunConfig
from mutualat.errors import ConfigError

SCENARIOS = ("rob-rob-online", "rob-rob-offline", "nat-rob-online", "nat-rob-offline")


def stage1_model_file(stage1_run_dir: str | Path, best: bool = False) -> Path:
    """The model file a one-model stage-1 run leaves (the trainer names it by its role, "model")."""
    return Path(stage1_run_dir) / "models" / ("model.best.safetensors" if best else "model.safetensors")


def scenario_configs(
    name: str, base: RunConfig, stage1_model_path: str | Path | None = None
) -> list[RunConfig]:
    """The configs to run, in order, for scenario ``name`` built from ``base``.

    ``base`` supplies data, attack, optimizer, evaluation and the two architectures
    (``base.models``: one entry is used for both h1 and h2, as in the paper; two entries are
    h1 and h2). If ``base.method`` is ``mat`` its params (alpha, temperature) are kept;
    ``natural`` is set by the scenario. ``base`` itself is not modified.
    """
    if name not in SCENARIOS:
        raise ConfigError(f"unknown MAT scenario {name!r}; known: {', '.join(SCENARIOS)}")
    if len(base.models) == 1:
        h1, h2 = base.models[0], base.models[0]
    elif len(base.models) == 2:
        h1, h2 = base.models
    else:
        raise ConfigError(
            f"MAT scenarios train two models (h1, h2); the base config lists {len(base.models)}"
        )
    # The scenario decides which member is fixed and where it starts from.
    h1 = dataclasses.replace(h1, init=None, frozen=False)
    h2 = dataclasses.replace(h2, frozen=False)
    nat_h1 = name.startswith("nat")
    mat_params = dict(base.method.params) if base.method.name == "mat" else {}
    mat_params["natural"] = [0] if nat_h1 else []

    if name.endswith("online"):
        return [_derive(base, [h1, h2], MethodConfig("mat", mat_params))]

    if stage1_model_path is None:
        raise ConfigError(
            f"scenario {name!r} trains h1 first and then h2 against it: pass the path of "
            "stage 1's model file (stage1_model_path)"
        )
    # Stage 1: Eq. 1 alone (rob) or L_C on clean images (nat: no training attack), on the
    # label loss the MAT of stage 2 uses.
    stage1 = _derive(base, [h1], MethodConfig("at", {"loss": mat_params.get("loss", "lc")}))
    if nat_h1:
        stage1.attack.steps = 0
    teacher = dataclasses.replace(h1, init=str(stage1_model_path), frozen=True)
    stage2 = _derive(base, [teacher, h2], MethodConfig("mat", mat_params))
    return [stage1.validate(), stage2]


def _derive(base: RunConfig, models: list[ModelConfig], method: MethodConfig) -> RunConfig:
    cfg = copy.deepcopy(base)
    cfg.models = copy.deepcopy(models)
    cfg.method = copy.deepcopy(method)
    return cfg.validate()
