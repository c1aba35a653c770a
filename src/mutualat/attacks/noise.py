"""Noise attacks (Gaussian, salt & pepper) and the helpers shared with the decision attacks.

Rauber, Brendel, Bethge, "Foolbox: A Python toolbox to benchmark the robustness of machine
learning models" (2017): the Gaussian-noise and salt-and-pepper attacks that Maini et al.
(ICML 2020) and the MAT paper (Table 5) put in their l2 and l1 suites. Both only query the
model's decision (argmax), so they cannot be fooled by masked gradients.

Decision attacks here are *judged at eps*: what they return is a misclassified point inside
the ball when they found one, else the clean ``x`` (noise attacks) or the projection of the
best point found onto the ball (minimum-norm attacks, see :func:`judge_at_eps`).
"""

from __future__ import annotations

import torch
from torch import nn

from mutualat.attacks.base import ATTACKS, Attack, Example, check_positive, check_positive_int
from mutualat.attacks.threat import make_threat
from mutualat.errors import ConfigError

#: Norms the decision attacks measure: l0 (number of changed coordinates), l1, l2.
DECISION_NORMS = ("l0", "l1", "l2")


def check_norm(attack: str, norm: object, allowed: tuple[str, ...]) -> str:
    if norm not in allowed:
        raise ConfigError(f"{attack}: norm must be one of {', '.join(allowed)}; got {norm!r}")
    return str(norm)


@torch.no_grad()
def misclassified(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the model's top-1 decision on ``x`` differs from ``y``."""
    return model(x).argmax(dim=1) != y


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """``(B,)`` float64 norms; l0 counts the non-zero coordinates, l1/l2 as the threat model."""
    if norm == "l0":
        return (delta.flatten(1) != 0).sum(dim=1).double()
    if delta.shape[0] == 0:  # the threat model's reshape cannot infer a size from no rows
        return torch.zeros(0, dtype=torch.float64, device=delta.device)
    return make_threat(norm, 1.0).norm_of(delta)


def project_to_ball(x: torch.Tensor, x_far: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The point of the ``eps`` ball around ``x`` (and of [0,1]) nearest to ``x_far``.

    For l0 that keeps the ``floor(eps)`` coordinates of ``x_far - x`` with the largest
    magnitude (the Euclidean projection onto the l0 ball); l1/l2 use the threat model.
    """
    delta = x_far - x
    if norm != "l0":
        return x + make_threat(norm, eps).project(x, delta)
    flat = delta.reshape(delta.shape[0], -1)
    k = min(int(eps), flat.shape[1])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, flat.abs().topk(k, dim=1).indices, True)
    return torch.where(keep.reshape(x.shape), x_far, x)


def judge_at_eps(
    x: torch.Tensor, x_found: torch.Tensor, found: torch.Tensor, norm: str, eps: float
) -> torch.Tensor:
    """What a minimum-norm attack returns: ``x_found`` where it was found and lies in the ball,
    its projection onto the ball where it was found outside, ``x`` where nothing was found."""
    inside = perturbation_norm(x_found - x, norm) <= eps
    projected = project_to_ball(x, x_found, norm, eps)
    keep = (found & inside).reshape(-1, 1, 1, 1)
    out = torch.where(keep, x_found, projected)
    return torch.where(found.reshape(-1, 1, 1, 1), out, x)


def salt_and_pepper_draw(x: torch.Tensor, budget: torch.Tensor, norm: str) -> torch.Tensor:
    """One random salt-and-pepper image per example whose perturbation has norm <= ``budget``.

    Each pixel gets salt (1 in every channel) or pepper (0) with probability 1/2 (foolbox's
    ``across_channels``); pixels are taken in a random order for as long as the running
    norm stays within ``budget`` ``(B,)`` (``inf`` flips every pixel). The running norm is
    summed from the same float32 differences a caller will measure, in float64, so the
    bound holds exactly and not only up to rounding.
    """
    b, c, h, w = x.shape
    value = (torch.rand(b, 1, h, w, device=x.device) < 0.5).to(x.dtype).expand_as(x)
    diff = value - x
    if norm == "l0":
        cost = (diff != 0).sum(dim=1)
        limit = budget
    elif norm == "l1":
        cost = diff.abs().sum(dim=1)
        limit = budget
    else:  # l2: squared norms add up over pixels
        cost = diff.square().sum(dim=1)
        limit = budget.square()
    order = torch.rand(b, h * w, device=x.device).argsort(dim=1)
    running = cost.reshape(b, -1).double().gather(1, order).cumsum(dim=1)
    take = torch.zeros(b, h * w, dtype=torch.bool, device=x.device)
    take.scatter_(1, order, running <= limit.double()[:, None])
    return torch.where(take.reshape(b, 1, h, w), value, x)


def max_norm(x: torch.Tensor, norm: str) -> float:
    """An upper bound on the norm of any perturbation of a [0,1] image of ``x``'s shape."""
    d = x[0].numel()
    return float(d) ** 0.5 if norm == "l2" else float(d)


@ATTACKS.register("gaussian_noise", family="decision", examples=(
    Example(dict(eps=1.0, repeats=3), strong=dict(eps=5.0)),
))
class GaussianNoise(Attack):
    """Additive Gaussian noise of l2 norm exactly ``eps`` (before clipping to [0,1]).

    Foolbox's ``L2AdditiveGaussianNoiseAttack`` (Rauber et al. 2017) as a fixed-budget attack:
    ``repeats`` independent draws ``x + eps * n / ||n||_2``, ``n ~ N(0, I)``, clipped to
    [0,1] (clipping only shortens the perturbation); per example the first draw that is
    misclassified is returned, else the clean ``x``.

    Args:
        norm: must be "l2".
        eps: l2 radius (default 0.5, the l2 budget of Maini et al. on CIFAR-10).
        repeats: number of draws (default 10, the paper's "10 random starts").
        bn_mode: "eval" (default) or "train", see :func:`mutualat.attacks.base.attack_mode`.

    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> ``x_adv`` (B, C, H, W).
    """

    def __init__(
        self, norm: str = "l2", eps: float = 0.5, repeats: int = 10, bn_mode: str = "eval"
    ) -> None:
        super().__init__(bn_mode)
        self.norm = check_norm("gaussian_noise", norm, ("l2",))
        self.eps = check_positive("eps", eps)
        self.repeats = check_positive_int("repeats", repeats)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        # Examples the model already gets wrong are broken by the clean image itself.
        done = misclassified(model, x, y)
        for _ in range(self.repeats):
            if bool(done.all()):
                break
            noise = torch.randn_like(x)
            norms = noise.reshape(x.shape[0], -1).norm(dim=1).clamp_min(1e-12)
            candidate = (x + noise * (self.eps / norms).reshape(-1, 1, 1, 1)).clamp(0.0, 1.0)
            new = ~done & misclassified(model, candidate, y)
            x_adv = torch.where(new.reshape(-1, 1, 1, 1), candidate, x_adv)
            done = done | new
        return x_adv


@ATTACKS.register("salt_and_pepper", family="decision", examples=(
    Example(dict(eps=4.0, steps=10), strong=dict(eps=30.0, steps=30)),
))
class SaltAndPepper(Attack):
    """Salt-and-pepper noise with a growing number of flipped pixels, within an lp budget.

    Foolbox's ``SaltAndPepperNoiseAttack`` (Rauber et al. 2017) turned into a fixed-budget
    attack: at step ``t`` of ``steps`` a fresh draw flips pixels to 0 or 1 (all channels) in
    random order while the perturbation's norm stays within ``eps * min(1, 2t / steps)``.
    The budget ramps up over the first half (so small perturbations are found first) and
    the second half spends every draw at the full budget, where success is likeliest.
    Per example the first misclassified draw is returned, else the clean ``x``; every draw
    is inside the ball by construction.

    Args:
        norm: "l1" (default, as in the l1 suites), "l0" (number of changed coordinates) or
            "l2".
        eps: radius of the ball (default 12, the l1 budget of Maini et al. on CIFAR-10).
        steps: number of draws (model queries per example), default 100.
        bn_mode: "eval" (default) or "train".

    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> ``x_adv`` (B, C, H, W).
    """

    def __init__(
        self, norm: str = "l1", eps: float = 12.0, steps: int = 100, bn_mode: str = "eval"
    ) -> None:
        super().__init__(bn_mode)
        self.norm = check_norm("salt_and_pepper", norm, DECISION_NORMS)
        self.eps = check_positive("eps", eps)
        self.steps = check_positive_int("steps", steps)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        done = misclassified(model, x, y)
        for t in range(1, self.steps + 1):
            if bool(done.all()):
                break
            fraction = min(1.0, 2.0 * t / self.steps)
            budget = torch.full(
                (x.shape[0],), self.eps * fraction, dtype=torch.float64, device=x.device
            )
            candidate = salt_and_pepper_draw(x, budget, self.norm)
            new = ~done & misclassified(model, candidate, y)
            x_adv = torch.where(new.reshape(-1, 1, 1, 1), candidate, x_adv)
            done = done | new
        return x_adv
