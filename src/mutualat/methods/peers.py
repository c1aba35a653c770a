"""What the cohort methods (MAT, MAT-MP) share about learning from peers: the peer targets'
batch-norm handling and the warm-up of the distillation weight. Both are options beyond the
paper, off by default (the paper's behaviour).

- ``target_bn``: how a trainable peer's clean forward (its soft label, computed without
  gradient) treats batch-norm.

  * ``"update"`` (default, the paper's code and DML's): a train-mode forward. It normalizes
    with the clean batch's statistics and moves the peer's running averages, so at
    equilibrium they are about half clean, half adversarial, unlike an AT model's.
  * ``"keep"``: the same train-mode forward (so the same target), with the running averages
    put back afterwards: they see only the adversarial training batches, as in AT. This
    isolates distillation from the batch-norm confound; it is the choice for a fair
    comparison with AT. (The loss still differs from "update" with batch-norm: the members'
    eval-mode attacks normalize with the running averages, which "update" has moved.)
  * ``"eval"``: an eval-mode forward (running averages, nothing updated): the target is the
    peer's prediction as it would be deployed. It differs from the train-mode target when the
    model has batch-norm (early in training the running averages lag behind).

  A member with neither batch-norm nor dropout gets the same target and loss in all three.
  Dropout (SmallCNN has 0.5 before its last layer) is on in the train-mode forward of
  "update" and "keep": the target is then one dropout sample of the peer's prediction, as in
  DML's train-mode forwards (on a briefly trained SmallCNN it named another class than the
  dropout-free prediction on about 13% of images); "eval" takes it with dropout off. Frozen
  peers are in eval mode anyway and are not affected.
- ``alpha_warmup``: the fraction of training (in steps) over which the distillation weight
  rises linearly from 0 to ``alpha``, so members learn from labels before they learn from
  each other's still-random predictions. 0 (default): ``alpha`` from the first step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mutualat.attacks.base import attack_mode
from mutualat.errors import ConfigError

TARGET_BN = ("update", "keep", "eval")


def check_target_bn(value: str) -> None:
    if value not in TARGET_BN:
        raise ConfigError(f"method.params.target_bn must be one of {', '.join(TARGET_BN)}, got {value!r}")


def check_warmup(value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"method.params.alpha_warmup is a fraction of training in [0, 1], got {value}")


def scheduled_alpha(alpha: float, warmup: float, progress: float) -> float:
    """``alpha`` scaled by ``min(1, progress / warmup)``: 0 at the start of training, ``alpha``
    from ``progress = warmup`` on (``progress`` = completed steps / all steps)."""
    if warmup <= 0:
        return alpha
    return alpha * min(1.0, max(progress, 0.0) / warmup)


@torch.no_grad()
def peer_logits(model: nn.Module, x: torch.Tensor, target_bn: str = "update") -> torch.Tensor:
    """A peer's clean logits as a distillation target (no gradient), its batch-norm treated as
    ``target_bn`` says. The model's modes are the same afterwards; with "keep" and "eval" so
    are its buffers."""
    if target_bn == "update" or not model.training:
        return model(x)
    with attack_mode(model, "eval" if target_bn == "eval" else "train"):
        return model(x)
