"""Building a run's members: their models, optimizers and schedules, and what a model file
says about them.

Member ``i`` of a cohort starts from seed ``seed + i`` (:func:`member_seed`), drawn in a
private RNG stream so that building a member never moves the run's own; member 1 of a cohort
therefore starts from the same weights as a single-model run of the same seed.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from mutualat.config import RunConfig
from mutualat.methods import Method, build_method
from mutualat.models import create_model, load_weights_into
from mutualat.train.cohort import Cohort, Member
from mutualat.train.optim import build_optimizer, build_scheduler
from mutualat.train.precision import Precision
from mutualat.train.speed import sample_batch


def member_seed(seed: int, index: int) -> int:
    """Member ``index`` of a cohort initializes from ``seed + index`` (documented contract:
    a single-model run with that seed starts from the same weights)."""
    return seed + index


def make_model(cfg: RunConfig, index: int, dataset: Any) -> nn.Module:
    """Member ``index``'s network, freshly initialized from its own seed (the run's RNG
    stream is left where it was)."""
    mcfg = cfg.models[index]
    c, h, _ = dataset.input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mcfg.seed if mcfg.seed is not None else member_seed(cfg.seed, index))
        return create_model(mcfg.name, num_classes=dataset.num_classes, in_channels=c,
                            input_size=h, mean=dataset.mean, std=dataset.std, **mcfg.kwargs)


def build_member(cfg: RunConfig, index: int, dataset: Any, method: Method, placement: Any,
                 device: torch.device, channels_last: bool, steps_per_epoch: int) -> Member:
    """Member ``index`` as this process trains it: its model (loaded from ``init`` if given)
    on ``device``, wrapped as ``placement`` needs; an optimizer and a schedule unless frozen."""
    mcfg = cfg.models[index]
    model = make_model(cfg, index, dataset)
    if mcfg.init:
        load_weights_into(model, mcfg.init)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    role = method.roles[index]
    if mcfg.frozen:
        return Member(index, role, model.eval().requires_grad_(False), True)
    module = placement.prepare(model, trainable=True)
    optimizer = build_optimizer(model, mcfg, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch)
    return Member(index, role, model, False, optimizer, scheduler, module)


def remote_member(cfg: RunConfig, index: int, dataset: Any, method: Method) -> Member:
    """A CPU copy of a member another process trains (rank 0 receives its weights before
    writing its model files)."""
    return Member(index, method.roles[index], make_model(cfg, index, dataset).eval(),
                  cfg.models[index].frozen)


def trial_step(cfg: RunConfig, dataset: Any, device: torch.device, batch: int,
               precision: Precision) -> Callable[[], None]:
    """One training step of ``cfg``'s method computed as ``precision`` says, on fresh copies
    of the members and ``batch`` random images of the data's shape: the unit the precision
    trial times (:func:`mutualat.train.precision.choose_precision`). Nothing of the run is
    touched: the models are new, the pixels and labels come from private generators."""
    models = []
    for i, mcfg in enumerate(cfg.models):
        model = make_model(cfg, i, dataset).to(device)
        if precision.channels_last:
            model.to(memory_format=torch.channels_last)
        models.append(model.eval().requires_grad_(False) if mcfg.frozen else model.train())
    method = build_method(cfg)
    cohort = Cohort.of(models, method)
    x = sample_batch(batch, tuple(dataset.input_shape), device, precision.channels_last)
    generator = torch.Generator(device=device).manual_seed(1)
    y = torch.randint(0, dataset.num_classes, (batch,), generator=generator, device=device)

    def step() -> None:
        for model in models:
            model.zero_grad(set_to_none=True)
        with precision.autocast(device):
            loss = method.loss(cohort, x, y).loss
        if loss.requires_grad:
            loss.backward()

    return step


def model_record(member: Member, cfg: RunConfig, method: Method, classes: list[str],
                 epoch: int) -> dict[str, Any]:
    """What a member's model file records about it (beside the architecture)."""
    threats = [t.record() for t in method.threats()]
    return {
        "role": member.role,
        "roles": method.roles,
        "dataset": cfg.data.name,
        "classes": list(classes),
        "threats": threats,  # what the model was trained against (MAT-MP: every type)
        # The single threat, as files written before "threats" existed hold it.
        **({"threat": threats[0]} if len(threats) == 1 else {}),
        "method": method.describe(),
        "epoch": epoch,
        "seed": cfg.seed,
    }
