"""Decoupled direction and norm (DDN) l2 attack, judged at a fixed epsilon.

Rony, Hafemann, Oliveira, Ben Ayed, Sabourin, Granger, "Decoupling Direction and Norm for
Efficient Gradient-Based L2 Adversarial Attacks and Defenses" (CVPR 2019), Algorithm 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mutualat.attacks.base import (
    ATTACKS, Attack, Example, check_positive, check_positive_int, warn_if_zero_gradient,
)
from mutualat.attacks.objectives import input_gradient, resolve_objective
from mutualat.attacks.threat import make_threat
from mutualat.errors import ConfigError

_TINY = 1e-12


@ATTACKS.register("ddn", family="gradient", examples=(Example(dict(eps=0.5, steps=5)),))
class DDN(Attack):
    """DDN: a gradient step of cosine-annealed length, then rescaling to a norm ``m`` that
    shrinks by ``1 - gamma`` while the point is adversarial and grows by ``1 + gamma`` while
    it is not.

    Args:
        eps: the l2 radius the result is judged at (default 0.5).
        steps: iterations (default 100).
        gamma: norm update factor (default 0.05).
        init_norm: initial norm ``m`` (default 1.0).
        bn_mode: "eval" (default) or "train".

    Returned per example: the smallest-norm misclassified point found, projected onto the
    eps-ball if outside; if none was found, the last iterate projected onto the ball.
    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> (B, C, H, W).
    """

    minimum_norm = True

    def __init__(
        self,
        norm: str = "l2",
        eps: float = 0.5,
        steps: int = 100,
        gamma: float = 0.05,
        init_norm: float = 1.0,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        if norm != "l2":
            raise ConfigError(f"ddn is an l2 attack; got norm={norm!r}")
        self.threat = make_threat(norm, eps)
        self.norm, self.eps = norm, eps
        self.steps = check_positive_int("steps", steps)
        if not 0 < gamma < 1:
            raise ConfigError(f"gamma must be in (0, 1), got {gamma!r}")
        self.gamma = float(gamma)
        self.init_norm = check_positive("init_norm", init_norm)
        self._objective = resolve_objective("ce")

    @torch.enable_grad()  # the attack differentiates even when called under no_grad
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        delta = torch.zeros_like(x)
        m = torch.full((batch,), self.init_norm, device=x.device, dtype=x.dtype)
        best_l2 = torch.full((batch,), float("inf"), device=x.device, dtype=x.dtype)
        best_delta = torch.zeros_like(x)
        for t in range(self.steps):
            # Step length annealed from 1 to 0.01 by a cosine (the paper's schedule).
            alpha = 0.01 + (1 - 0.01) * (1 + math.cos(math.pi * t / self.steps)) / 2
            grad, logits, _ = input_gradient(model, self._objective, x, y, delta, None)
            if t == 0:
                warn_if_zero_gradient(grad, "ddn")
            l2 = delta.flatten(1).norm(dim=1)
            adv = logits.argmax(dim=1) != y
            improved = adv & (l2 < best_l2)
            best_l2 = torch.where(improved, l2, best_l2)
            best_delta = torch.where(improved.reshape(-1, 1, 1, 1), delta, best_delta)
            m = torch.where(adv, m * (1 - self.gamma), m * (1 + self.gamma))
            g_norm = grad.flatten(1).norm(dim=1).clamp_min(_TINY).reshape(-1, 1, 1, 1)
            delta = delta + alpha * grad / g_norm
            d_norm = delta.flatten(1).norm(dim=1).clamp_min(_TINY)
            delta = delta * (m / d_norm).reshape(-1, 1, 1, 1)
            delta = (x + delta).clamp(0.0, 1.0) - x
        with torch.no_grad():
            adv = model(x + delta).argmax(dim=1) != y
            l2 = delta.flatten(1).norm(dim=1)
            improved = adv & (l2 < best_l2)
            best_l2 = torch.where(improved, l2, best_l2)
            best_delta = torch.where(improved.reshape(-1, 1, 1, 1), delta, best_delta)
        found = torch.isfinite(best_l2).reshape(-1, 1, 1, 1)
        return self.threat.finalize(x, torch.where(found, best_delta, delta))
