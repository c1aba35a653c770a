"""The shared loop of the "unforeseen" attacks of Kang et al. (Fog, Gabor, Elastic).

Kang, Sun, Hendrycks, Brown, Steinhardt, "Testing Robustness Against Unforeseen
Adversaries" (2019; code: ddkang/advex-uar). Each attack renders an image from ``x`` and
its own parameters (a fog map's random variables, sparse noise under Gabor kernels, a flow
field) and runs signed-gradient ascent on the cross-entropy over those parameters, kept in
their own box after every step. There is no lp ball around ``x`` (``norm = None``); ``eps``
is the attack's own strength. Results are always in [0,1].

advex-uar's ImageNet strengths do not transfer to 32x32 / 28x28 images, so each attack
carries ``CALIBRATED_EPS`` (chosen on small trained models, see each module's docstring),
which suites and configs cite.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mutualat.attacks.base import Attack, check_positive, check_positive_int
from mutualat.errors import ConfigError
from mutualat.losses import cross_entropy


def check_no_norm(attack: str, norm: object) -> None:
    """The unforeseen attacks accept ``norm=None`` for a uniform constructor, nothing else."""
    if norm is not None:
        raise ConfigError(f"{attack} has no lp threat model: norm must be None, got {norm!r}")


class ParameterSpaceAttack(Attack):
    """Signed-gradient ascent over an attack's own parameters.

    Subclasses implement :meth:`init_params` (the parameters to optimize and the constants
    of this call, e.g. random kernels, all drawn with torch's random generator on ``x``'s
    device, so ``torch.manual_seed`` makes a run repeatable), :meth:`render` (an image from
    ``x``, differentiable in the parameters), :meth:`clamp_params` (back into their box)
    and :meth:`param_radius`. Per example the result is the final iterate if it is
    misclassified, else the first misclassified iterate seen, else the final iterate: an
    example once broken stays broken.

    ``step_size`` defaults to Madry et al.'s rule, ``2.5 * radius / steps`` with ``radius``
    half the width of the parameter box.
    """

    norm: str | None = None

    def __init__(self, eps: float, steps: int, step_size: float | None, bn_mode: str) -> None:
        super().__init__(bn_mode)
        self.eps = check_positive("eps", eps)
        self.steps = check_positive_int("steps", steps)
        self.step_size = (
            2.5 * self.param_radius() / self.steps
            if step_size is None
            else check_positive("step_size", step_size)
        )

    def param_radius(self) -> float:
        raise NotImplementedError

    def init_params(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def render(
        self, x: torch.Tensor, params: list[torch.Tensor], const: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        raise NotImplementedError

    def clamp_params(
        self, params: list[torch.Tensor], const: dict[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        raise NotImplementedError

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params, const = self.init_params(x)
        first_wrong = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for t in range(self.steps):
            params = [p.detach().requires_grad_(True) for p in params]
            x_adv = self.render(x, params, const).clamp(0.0, 1.0)
            logits = model(x_adv)
            # Summed so each example's parameter gradient is independent of the batch.
            loss = cross_entropy(logits, y, reduction="sum")
            grads = torch.autograd.grad(loss, params)
            if t == 0 and all(g.abs().amax() == 0 for g in grads):
                warnings.warn(
                    f"{type(self).__name__.lower()}: the gradient with respect to the "
                    "attack's parameters is exactly zero for the whole batch, so the attack "
                    "cannot move; the model may be constant or masking gradients.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            with torch.no_grad():
                new = ~fooled & (logits.argmax(dim=1) != y)
                first_wrong = torch.where(new.reshape(-1, 1, 1, 1), x_adv, first_wrong)
                fooled = fooled | new
                params = self.clamp_params(
                    [p + self.step_size * g.sign() for p, g in zip(params, grads)], const
                )
        with torch.no_grad():
            x_adv = self.render(x, params, const).clamp(0.0, 1.0)
            keep_first = fooled & (model(x_adv).argmax(dim=1) == y)
        return torch.where(keep_first.reshape(-1, 1, 1, 1), first_wrong, x_adv)
