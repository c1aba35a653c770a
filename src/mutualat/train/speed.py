"""A run's speed options, applied once when the trainer is built and recorded in its log.

- ``RunConfig.compile``: ``"model"`` compiles every member in place (``nn.Module.compile``,
  so state-dict keys and checkpoints are unchanged); its forward and backward are then
  compiled for the attack's passes as well as the training step. ``"all"`` also fuses the
  training PGD's l-inf update. Off by default: on this project's CPU compile made the
  backward 2x slower (docs/PERFORMANCE.md).
- On CUDA, unless ``deterministic``, ``torch.backends.cudnn.benchmark`` is switched on (the
  training shapes are fixed, so cuDNN's one-off algorithm search pays for itself).

bf16 autocast and channels_last are chosen before the members are built
(:mod:`mutualat.train.precision`) and recorded in the same log event.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from mutualat.attacks import PGD
from mutualat.config import RunConfig


def sample_batch(batch_size: int, input_shape: tuple[int, ...], device: torch.device,
                 channels_last: bool) -> torch.Tensor:
    """A ``(B, C, H, W)`` batch of uniform [0,1] pixels, drawn without touching the global RNG."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((batch_size, *input_shape), generator=generator, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def apply_speed_options(cfg: RunConfig, method: Any, models: Iterable[torch.nn.Module],
                        device: torch.device) -> dict[str, Any]:
    """Compile the members' ``models`` if asked, let cuDNN search its kernels; returns what to
    log."""
    if cfg.compile in ("model", "all"):
        for model in models:
            model.compile()
    attack = getattr(method, "attack", None)
    if cfg.compile == "all" and isinstance(attack, PGD):
        attack.compile_step()
    if device.type == "cuda" and not cfg.deterministic:
        # Fixed shapes every step: let cuDNN time its algorithms once and keep the fastest.
        torch.backends.cudnn.benchmark = True
    return {"device": str(device), "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "compile": cfg.compile}
