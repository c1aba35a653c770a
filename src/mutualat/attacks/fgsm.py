"""Fast gradient sign method.

Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples" (ICLR 2015).
"""

from __future__ import annotations

import torch
from torch import nn

from mutualat.attacks.base import ATTACKS, Attack, Example, warn_if_zero_gradient
from mutualat.attacks.objectives import LossFn, input_gradient, resolve_objective
from mutualat.attacks.threat import make_threat
from mutualat.errors import ConfigError


@ATTACKS.register("fgsm", family="gradient", examples=(Example(dict(eps=8 / 255)),))
class FGSM(Attack):
    """One step ``x + eps * sign(grad)`` in the linf ball, clipped to [0,1].

    Args:
        eps: linf radius (default 8/255).
        loss: the objective (default "ce"), see :mod:`mutualat.attacks.objectives`.
        bn_mode: "eval" (default) or "train".

    ``norm`` is accepted for a uniform constructor but must be "linf".
    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> ``x_adv`` (B, C, H, W).
    """

    def __init__(
        self,
        norm: str = "linf",
        eps: float = 8 / 255,
        loss: str | LossFn = "ce",
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        if norm != "linf":
            raise ConfigError(f"fgsm is an linf attack; got norm={norm!r} (use pgd for l2/l1)")
        self.threat = make_threat(norm, eps)
        self.norm, self.eps = norm, eps
        self.loss = loss
        self._objective = resolve_objective(loss)

    @torch.enable_grad()  # the attack differentiates even when called under no_grad
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        clean = None
        if self._objective.needs_clean:
            with torch.no_grad():
                clean = model(x)
        grad, _, _ = input_gradient(model, self._objective, x, y, torch.zeros_like(x), clean)
        warn_if_zero_gradient(grad, "fgsm")
        return self.threat.finalize(x, self.threat.ascent_step(grad, self.eps))
