"""A run's speed options, applied once when the trainer is built and recorded in its log.

- ``RunConfig.compile``: ``"model"`` compiles every member in place (``nn.Module.compile``,
  so state-dict keys and checkpoints are unchanged); its forward and backward are then
  compiled for the attack's passes as well as the training step. ``"all"`` also fuses the
  training PGD's l-inf update. Off by default: on this project's CPU compile made the
  backward 2x slower (docs/PERFORMANCE.md).
- ``RunConfig.cohort_batch``: whether a cohort method (MAT) runs its members as one batched
  computation (:mod:`mutualat.methods.cohort_batch`). ``"auto"`` decides here, on a batch of
  the run's real shape (random pixels from a private generator, so the run's random stream
  is untouched), under the run's autocast and memory format.

bf16 autocast and channels_last are chosen before the members are built
(:mod:`mutualat.train.precision`) and recorded in the same log event. On CUDA,
unless ``deterministic``, ``torch.backends.cudnn.benchmark`` is switched on (the training
shapes are fixed, so cuDNN's one-off algorithm search pays for itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from mutualat.train.trainer import Trainer


def sample_batch(batch_size: int, input_shape: tuple[int, ...], device: torch.device,
                 channels_last: bool) -> torch.Tensor:
    """A ``(B, C, H, W)`` batch of uniform [0,1] pixels, drawn without touching the global RNG."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((batch_size, *input_shape), generator=generator, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def apply_speed_options(trainer: "Trainer") -> dict[str, Any]:
    """Compile the members if asked, choose the cohort path; returns what to log."""
    from mutualat.attacks import PGD

    cfg, method = trainer.cfg, trainer.method
    if cfg.compile in ("model", "all"):
        for member in trainer.members:
            member.model.compile()
    # What the method's loss receives: models by their position in RunConfig.models, None
    # for a member held by another process, a DistributedDataParallel wrapper in data mode.
    models: list[Any] = [None] * len(cfg.models)
    for i, member in enumerate(trainer.members):
        wrapped = getattr(member, "module", None)
        models[getattr(member, "index", i)] = wrapped if wrapped is not None else member.model
    attack = getattr(method, "attack", None)
    if cfg.compile == "all" and isinstance(attack, PGD):
        attack.compile_step()

    if trainer.device.type == "cuda" and not cfg.deterministic:
        # Fixed shapes every step: let cuDNN time its algorithms once and keep the fastest.
        torch.backends.cudnn.benchmark = True
    record: dict[str, Any] = {
        "device": str(trainer.device),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "compile": cfg.compile,
    }
    if not hasattr(method, "set_cohort_batch"):
        return {**record, "cohort_batched": False, "cohort_reason": "not a cohort method"}
    x = sample_batch(cfg.data.batch_size, tuple(trainer.dataset.input_shape), trainer.device,
                     trainer.channels_last)
    autocast = trainer.precision.chosen.autocast(trainer.device)
    # Data-parallel training (mutualat.train.distributed) needs the loop: the batched cohort
    # calls the members around their DistributedDataParallel wrappers, whose gradients would
    # then not be averaged over the processes.
    mode = "loop" if getattr(trainer.dist, "mode", None) == "data" else cfg.cohort_batch
    with autocast:
        choice = method.set_cohort_batch(mode, models, x)
    return {**record, **choice.record()}
