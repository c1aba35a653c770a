"""A run's checkpoint state: assembled on rank 0 from every process, and restored.

The checkpoint has the single-process layout whatever the placement: per-member lists of
weights, optimizer and scheduler states (``models``, ``optimizers``, ``schedulers``), the
counters, the run's config and identity, the precision it computes in, and the RNG state of
every process (``rng``: rank 0's; ``rng_ranks``: all of them when several processes ran), so a
run resumed with the same processes continues exactly, and any placement can resume it.
:func:`seed_everything` seeds every RNG when the trainer is built.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from mutualat.errors import CheckpointError
from mutualat.train.cohort import Cohort


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def gather_state(cohort: Cohort, processes: Any, placement: Any,
                 header: dict[str, Any]) -> dict[str, Any] | None:
    """The whole run's state on rank 0 (None on the other processes, which send theirs):
    ``header`` (config, counters, ...) and every member and process gathered."""
    # Data-parallel: rank 0 holds every member, the others send only their RNG state.
    mine = processes.is_main or not placement.members_on_main()
    parts = processes.gather_to_main({"members": cohort.local_state() if mine else {},
                                      "rng": rng_state()})
    if parts is None:
        return None
    members = {i: m for p in parts for i, m in p["members"].items()}
    n = cohort.size
    state = {
        **header,
        "models": [members[i][0] for i in range(n)],
        "optimizers": [members[i][1] for i in range(n)],
        "schedulers": [members[i][2] for i in range(n)],
        "rng": parts[0]["rng"],
    }
    if len(parts) > 1:  # every process's RNG, so a resumed run continues exactly
        state["rng_ranks"] = [p["rng"] for p in parts]
        state["distributed"] = {"mode": placement.mode, "processes": len(parts)}
    return state


def restore_state(state: dict[str, Any], cohort: Cohort, processes: Any, seed: int) -> None:
    """This process's members and RNG from ``state`` (its part, see the placement's
    ``checkpoint_part``); a process the checkpoint's run did not have is reseeded."""
    if len(state["models"]) != cohort.size:
        raise CheckpointError(
            f"checkpoint holds {len(state['models'])} models, the config {cohort.size}"
        )
    cohort.load_local_state(state["models"], state["optimizers"], state["schedulers"])
    if state["rng"] is None:
        processes.seed(seed, state["global_step"])
    else:
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
