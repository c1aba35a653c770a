"""Multi steepest descent (MSD): one attack against the union of linf, l2 and l1 balls.

Maini, Wong, Kolter, "Adversarial Robustness Against the Union of Multiple Perturbation
Models" (ICML 2020), Algorithm 2; docs/METHOD.md §6.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from mutualat.attacks.base import (
    ATTACKS, Attack, Example, check_positive, check_positive_int, warn_if_zero_gradient,
)
from mutualat.attacks.objectives import LossFn, input_gradient, resolve_objective
from mutualat.attacks.threat import ThreatModel, make_threat
from mutualat.errors import ConfigError

NORMS = ("linf", "l2", "l1")
# Maini et al.'s CIFAR-10 settings (also the paper's MAT-MP settings, docs/METHOD.md §4).
DEFAULT_EPS = {"linf": 0.03, "l2": 0.5, "l1": 12.0}
DEFAULT_STEP = {"linf": 0.003, "l2": 0.05, "l1": 0.05}


def _per_norm(name: str, value: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    """Accept ``{"linf": a, "l2": b, "l1": c}`` or a tuple ``(a, b, c)`` in that order."""
    if isinstance(value, Mapping):
        unknown = set(value) - set(NORMS)
        if unknown or len(value) == 0:
            raise ConfigError(f"msd {name}: keys must be among {NORMS}, got {sorted(value)}")
        return {n: check_positive(f"{name}[{n}]", float(v)) for n, v in value.items()}
    if isinstance(value, (tuple, list)) and len(value) == len(NORMS):
        return {n: check_positive(f"{name}[{n}]", float(v)) for n, v in zip(NORMS, value)}
    raise ConfigError(f"msd {name} must be a dict over {NORMS} or a 3-tuple, got {value!r}")


@ATTACKS.register("msd", family="gradient", examples=(
    Example(dict(eps=(8 / 255, 0.5, 5.0), step_size=(2 / 255, 0.1, 0.1), steps=3)),
))
class MSD(Attack):
    """MSD: at each iteration, from the current point and its single gradient, take one
    projected step per norm and keep per example the candidate with the highest loss.

    Args:
        eps: radius per norm, dict ``{"linf", "l2", "l1"}`` or a tuple in that order
            (default (0.03, 0.5, 12)). A dict may name a subset of the norms.
        step_size: step per norm, same forms (default (0.003, 0.05, 0.05); the l1 step is
            the per-coordinate move at k = 20, see :class:`L1Threat`).
        steps: iterations (default 50).
        loss: objective (default "ce").
        bn_mode: "eval" (default) or "train" (as Maini et al.'s code runs it).

    The start is ``x`` (no random start, as in the reference). Returned per example: the
    candidate of highest loss over all iterations (the start included), which lies in the
    ball of the norm whose step produced it, hence in the union of the balls.
    ``self.eps`` is the dict of radii; ``self.norm`` is ``"union"``.
    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> (B, C, H, W). Each iteration costs
    one forward-backward and one forward per norm.
    """

    def __init__(
        self,
        eps: Mapping[str, float] | Sequence[float] = (0.03, 0.5, 12.0),
        step_size: Mapping[str, float] | Sequence[float] = (0.003, 0.05, 0.05),
        steps: int = 50,
        loss: str | LossFn = "ce",
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        eps_d = _per_norm("eps", eps)
        step_d = _per_norm("step_size", step_size)
        if set(step_d) != set(eps_d):
            raise ConfigError(
                f"msd: eps norms {sorted(eps_d)} and step_size norms {sorted(step_d)} differ"
            )
        self.norm = "union"
        self.eps = eps_d
        self.step_size = step_d
        self.threats: list[ThreatModel] = [make_threat(n, eps_d[n]) for n in NORMS if n in eps_d]
        self.steps = check_positive_int("steps", steps)
        self.loss = loss
        self._objective = resolve_objective(loss)

    @torch.enable_grad()  # the attack differentiates even when called under no_grad
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        clean = None
        if self._objective.needs_clean:
            with torch.no_grad():
                clean = model(x)
        delta = torch.zeros_like(x)
        best_delta = delta
        best_loss = None
        # Index into self.threats of the ball each best candidate lies in (start: any ball).
        best_kind = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for t in range(self.steps):
            grad, _, loss = input_gradient(model, self._objective, x, y, delta, clean)
            if t == 0:
                warn_if_zero_gradient(grad, "msd")
                best_loss = loss
            cand_delta, cand_loss, cand_kind = None, None, None
            with torch.no_grad():
                for i, threat in enumerate(self.threats):
                    step = threat.ascent_step(grad, self.step_size[threat.norm], x_adv=x + delta)
                    d = threat.project(x, delta + step)
                    l = self._objective.fn(model(x + d), y, clean)
                    if cand_loss is None:
                        cand_delta, cand_loss = d, l
                        cand_kind = torch.full_like(best_kind, i)
                    else:
                        # Ties go to the later norm, as in the reference (loss >= max_loss).
                        take = l >= cand_loss
                        cand_delta = torch.where(take.reshape(-1, 1, 1, 1), d, cand_delta)
                        cand_loss = torch.where(take, l, cand_loss)
                        cand_kind = torch.where(take, i, cand_kind)
                delta = cand_delta
                better = cand_loss > best_loss
                best_delta = torch.where(better.reshape(-1, 1, 1, 1), cand_delta, best_delta)
                best_loss = torch.where(better, cand_loss, best_loss)
                best_kind = torch.where(better, cand_kind, best_kind)
        out = x + best_delta
        for i, threat in enumerate(self.threats):
            mine = (best_kind == i).reshape(-1, 1, 1, 1)
            out = torch.where(mine, threat.finalize(x, best_delta), out)
        return out
