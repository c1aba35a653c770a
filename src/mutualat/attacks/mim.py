"""Momentum iterative FGSM (MIM / MI-FGSM).

Dong, Liao, Pang, Su, Zhu, Hu, Li, "Boosting Adversarial Attacks with Momentum" (CVPR 2018),
Algorithm 1: ``g <- mu * g + grad / ||grad||_1``, ``x <- clip(x + alpha * sign(g))``.
"""

from __future__ import annotations

import torch
from torch import nn

from mutualat.attacks.base import (
    ATTACKS, Attack, Example, check_positive, check_positive_int, warn_if_zero_gradient,
)
from mutualat.attacks.objectives import LossFn, input_gradient, resolve_objective
from mutualat.attacks.threat import make_threat
from mutualat.errors import ConfigError

_TINY = 1e-12


@ATTACKS.register("mim", family="gradient", examples=(Example(dict(eps=8 / 255, steps=3)),))
class MIM(Attack):
    """MI-FGSM in the linf ball, from ``x`` (no random start, as in the paper).

    Args:
        eps: linf radius (default 8/255).
        steps: iterations T (default 10).
        step_size: alpha; default ``eps / steps`` (the paper's choice).
        decay: momentum mu (default 1.0).
        loss: objective, default "ce".
        bn_mode: "eval" (default) or "train".

    ``norm`` must be "linf". Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> (B, C, H, W).
    """

    def __init__(
        self,
        norm: str = "linf",
        eps: float = 8 / 255,
        steps: int = 10,
        step_size: float | None = None,
        decay: float = 1.0,
        loss: str | LossFn = "ce",
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        if norm != "linf":
            raise ConfigError(f"mim is an linf attack; got norm={norm!r}")
        self.threat = make_threat(norm, eps)
        self.norm, self.eps = norm, eps
        self.steps = check_positive_int("steps", steps)
        self.step_size = (
            eps / steps if step_size is None else check_positive("step_size", step_size)
        )
        if not decay >= 0:
            raise ConfigError(f"decay must be >= 0, got {decay!r}")
        self.decay = float(decay)
        self.loss = loss
        self._objective = resolve_objective(loss)

    @torch.enable_grad()  # the attack differentiates even when called under no_grad
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        clean = None
        if self._objective.needs_clean:
            with torch.no_grad():
                clean = model(x)
        delta = torch.zeros_like(x)
        momentum = torch.zeros_like(x)
        for t in range(self.steps):
            grad, _, _ = input_gradient(model, self._objective, x, y, delta, clean)
            if t == 0:
                warn_if_zero_gradient(grad, "mim")
            l1 = grad.abs().flatten(1).sum(dim=1).clamp_min(_TINY).reshape(-1, 1, 1, 1)
            momentum = self.decay * momentum + grad / l1
            delta = self.threat.project(x, delta + self.step_size * momentum.sign())
        return self.threat.finalize(x, delta)
