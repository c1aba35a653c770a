"""Auto-PGD (APGD), the step-size-free PGD of AutoAttack.

Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (ICML 2020), Algorithm 1; the l2 version as in their
fra31/auto-attack code (normalised gradient step, l2 projection).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mutualat.attacks.base import (
    ATTACKS, Attack, Example, check_positive_int, warn_if_zero_gradient,
)
from mutualat.attacks.objectives import input_gradient, resolve_objective
from mutualat.attacks.threat import make_threat
from mutualat.errors import ConfigError

MOMENTUM = 0.75  # alpha of Algorithm 1
RHO = 0.75  # fraction of improving steps below which the step size is halved


def checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j = ceil(p_j * steps)`` at which the step size may be halved:
    ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # The small guard keeps 0.57 * 100 = 56.99999... from rounding up to 58.
    return sorted({math.ceil(pj * steps - 1e-9) for pj in p[1:]} - {0})


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


@ATTACKS.register("apgd", family="gradient", examples=(
    Example(dict(norm="linf", eps=8 / 255, steps=4, restarts=2)),
))
class APGD(Attack):
    """APGD with momentum 0.75 and a step size starting at ``2 eps``, halved at checkpoints
    where fewer than 75 % of the steps since the last one increased the loss, or where
    neither the step size nor the best loss changed; after halving, the run continues from
    the best point so far.

    Args:
        norm: "linf" (default) or "l2".
        eps: radius (default 8/255).
        steps: iterations (default 100).
        restarts: runs from random starts; per example a misclassifying run wins (default 1).
        loss: "ce" (default) or "dlr" (needs at least 3 classes).
        bn_mode: "eval" (default) or "train".

    Also registered as "apgd-ce" and "apgd-dlr" with the loss fixed. Returned per example: a
    misclassified point if one was found, else the point of highest loss. No host
    synchronisation inside the loop. Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) ->
    (B, C, H, W).
    """

    def __init__(
        self,
        norm: str = "linf",
        eps: float = 8 / 255,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        if norm not in ("linf", "l2"):
            raise ConfigError(f"apgd supports norm 'linf' or 'l2', got {norm!r}")
        if loss not in ("ce", "dlr"):
            raise ConfigError(f"apgd loss must be 'ce' or 'dlr', got {loss!r}")
        self.threat = make_threat(norm, eps)
        self.norm, self.eps = norm, eps
        self.steps = check_positive_int("steps", steps)
        self.restarts = check_positive_int("restarts", restarts)
        self.loss = loss
        self._objective = resolve_objective(loss)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, first: bool):
        threat, obj = self.threat, self._objective
        delta = threat.random_init(x)
        grad, logits, loss = input_gradient(model, obj, x, y, delta, None)
        if first:
            warn_if_zero_gradient(grad, "apgd")
        wrong = logits.argmax(dim=1) != y
        adv_delta = delta.clone()
        best_loss, best_delta, best_grad = loss, delta, grad
        eta = torch.full_like(loss, 2 * self.eps)
        prev_delta = delta
        ckpts = set(checkpoints(self.steps))
        last_ckpt = 0
        increases = torch.zeros_like(loss)
        eta_at_ckpt, best_at_ckpt = eta.clone(), best_loss.clone()
        for k in range(self.steps):
            z = threat.project(x, delta + threat.ascent_step(grad, 1.0) * _bcast(eta, x))
            if k > 0:
                z = threat.project(
                    x, delta + MOMENTUM * (z - delta) + (1 - MOMENTUM) * (delta - prev_delta)
                )
            prev_delta, delta = delta, z
            new_grad, logits, new_loss = input_gradient(model, obj, x, y, delta, None)
            now_wrong = logits.argmax(dim=1) != y
            adv_delta = torch.where(_bcast(now_wrong & ~wrong, x), delta, adv_delta)
            wrong = wrong | now_wrong
            increases = increases + (new_loss > loss).to(loss.dtype)
            improved = new_loss > best_loss
            best_loss = torch.where(improved, new_loss, best_loss)
            best_delta = torch.where(_bcast(improved, x), delta, best_delta)
            best_grad = torch.where(_bcast(improved, x), new_grad, best_grad)
            grad, loss = new_grad, new_loss
            if k + 1 in ckpts:
                span = k + 1 - last_ckpt
                stalled = increases < RHO * span
                unchanged = (eta == eta_at_ckpt) & (best_loss <= best_at_ckpt)
                halve = stalled | unchanged
                eta = torch.where(halve, eta / 2, eta)
                delta = torch.where(_bcast(halve, x), best_delta, delta)
                grad = torch.where(_bcast(halve, x), best_grad, grad)
                loss = torch.where(halve, best_loss, loss)
                eta_at_ckpt, best_at_ckpt = eta.clone(), best_loss.clone()
                increases = torch.zeros_like(increases)
                last_ckpt = k + 1
        result = torch.where(_bcast(wrong, x), adv_delta, best_delta)
        return result, wrong, best_loss

    @torch.enable_grad()  # the attack differentiates even when called under no_grad
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best, best_wrong, best_loss = self._run(model, x, y, first=True)
        for _ in range(self.restarts - 1):
            delta, wrong, loss = self._run(model, x, y, first=False)
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
            best = torch.where(_bcast(better, x), delta, best)
            best_loss = torch.where(better, loss, best_loss)
            best_wrong = best_wrong | wrong
        return self.threat.finalize(x, best)


@ATTACKS.register("apgd-ce", family="gradient", examples=(
    Example(dict(norm="l2", eps=0.5, steps=4)),
))
def apgd_ce(**kwargs: object) -> APGD:
    """APGD on cross-entropy (AutoAttack's first attack); takes APGD's arguments but ``loss``."""
    return APGD(loss="ce", **kwargs)  # type: ignore[arg-type]


@ATTACKS.register("apgd-dlr", family="gradient", examples=(
    Example(dict(norm="linf", eps=8 / 255, steps=4)),
))
def apgd_dlr(**kwargs: object) -> APGD:
    """APGD on the DLR loss (scale invariant; K >= 3); takes APGD's arguments but ``loss``."""
    return APGD(loss="dlr", **kwargs)  # type: ignore[arg-type]
