"""Pointwise attack: a decision-based minimum-norm attack that undoes a random perturbation.

Schott, Rauber, Bethge, Brendel, "Towards the first adversarially robust neural network
model on MNIST" (ICLR 2019), Sec. 5; the l1 and l2 suites of Maini et al. (ICML 2020) and of
the MAT paper (Table 5) use it. Follows foolbox's ``PointwiseAttack``, batched.
"""

from __future__ import annotations

import torch
from torch import nn

from mutualat.attacks.base import ATTACKS, Attack, Example, check_positive, check_positive_int
from mutualat.attacks.noise import (
    DECISION_NORMS,
    check_norm,
    judge_at_eps,
    max_norm,
    misclassified,
    perturbation_norm,
    salt_and_pepper_draw,
)
from mutualat.errors import ConfigError

_INITS = ("salt_and_pepper", "uniform_noise")


@ATTACKS.register("pointwise", family="decision", examples=(
    Example(dict(norm="l2", eps=0.3, init_steps=20, passes=2, search_passes=1, search_steps=3),
            strong=dict(eps=2.0)),
    Example(dict(norm="l1", eps=2.0, init_steps=20, passes=2, search_passes=1, search_steps=3),
            "l1", strong=dict(eps=20.0)),
    Example(dict(norm="l0", eps=10, init_steps=20, passes=2), "l0", strong=dict(eps=100)),
))
class Pointwise(Attack):
    """Start from a misclassified noisy image, then move coordinates back to the original.

    1. Start: salt-and-pepper noise with a growing budget (foolbox's default), or uniform
       noise images, ``init_steps`` draws; the first misclassified draw is the start.
    2. Reset passes: in a random order, set each coordinate (pixel and channel) that differs
       from ``x`` back to its original value and keep the change if the image is still
       misclassified. Passes repeat until one changes nothing (at most ``passes``).
    3. Search passes (l1 and l2 only; they cannot lower an l0 norm): for each coordinate
       still differing, a ``search_steps``-step binary search between its value and the
       original finds the value closest to the original that stays misclassified.

    The batch is attacked in parallel (one model query per coordinate step for every
    example still being refined, each with its own order). As the attack is judged at eps,
    an example stops being refined as soon as it lies in the ball; the result is that point,
    or the projection onto the ball of the best point found (see
    :func:`mutualat.attacks.noise.judge_at_eps`), or ``x`` if no start was found.

    Args:
        norm: "l2" (default), "l1" or "l0" (number of changed coordinates).
        eps: radius (default 0.5, the l2 budget of Maini et al. on CIFAR-10; use 12 for l1).
        init: "salt_and_pepper" (default) or "uniform_noise".
        init_steps: draws to find a misclassified start (default 100).
        passes: most reset passes (default 10).
        search_passes: most binary-search passes (default 2).
        search_steps: bisections per coordinate (default 10, as foolbox).
        bn_mode: "eval" (default) or "train".

    Cost: about ``#changed coordinates * (passes + search_passes * (1 + search_steps))``
    forward passes of the still-open examples; a salt-and-pepper start changes few.
    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> ``x_adv`` (B, C, H, W).
    """

    minimum_norm = True

    def __init__(
        self,
        norm: str = "l2",
        eps: float = 0.5,
        init: str = "salt_and_pepper",
        init_steps: int = 100,
        passes: int = 10,
        search_passes: int = 2,
        search_steps: int = 10,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        self.norm = check_norm("pointwise", norm, DECISION_NORMS)
        self.eps = check_positive("eps", eps)
        if init not in _INITS:
            raise ConfigError(f"pointwise: init must be one of {', '.join(_INITS)}; got {init!r}")
        self.init = init
        self.init_steps = check_positive_int("init_steps", init_steps)
        self.passes = check_positive_int("passes", passes)
        self.search_passes = check_positive_int("search_passes", search_passes)
        self.search_steps = check_positive_int("search_steps", search_steps)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start, found = self._start(model, x, y)
        x0 = x.reshape(x.shape[0], -1)
        current = start.reshape(x.shape[0], -1).clone()
        for _ in range(self.passes):
            if not self._reset_pass(model, x0, y, current, found, x.shape[1:]):
                break
        if self.norm != "l0":
            for _ in range(self.search_passes):
                if not self._search_pass(model, x0, y, current, found, x.shape[1:]):
                    break
        return judge_at_eps(x, current.reshape(x.shape), found, self.norm, self.eps)

    def _start(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        start = x.clone()
        found = misclassified(model, x, y)  # the clean image already is a start (norm 0)
        full = max_norm(x, self.norm)
        for t in range(1, self.init_steps + 1):
            if bool(found.all()):
                break
            if self.init == "salt_and_pepper":
                budget = torch.full((x.shape[0],), full * t / self.init_steps,
                                    dtype=torch.float64, device=x.device)
                candidate = salt_and_pepper_draw(x, budget, self.norm)
            else:
                candidate = torch.rand_like(x)
            new = ~found & misclassified(model, candidate, y)
            start = torch.where(new.reshape(-1, 1, 1, 1), candidate, start)
            found = found | new
        return start, found

    def _open(self, x0: torch.Tensor, current: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
        """Examples still being refined: a start was found and it is outside the ball."""
        return found & (perturbation_norm(current - x0, self.norm) > self.eps)

    def _order(self, x0: torch.Tensor, current: torch.Tensor, rows_open: torch.Tensor):
        """Per example a random order of the coordinates with the differing ones first."""
        differs = (current != x0) & rows_open[:, None]
        key = torch.rand(current.shape, device=current.device) + (~differs).to(current.dtype) * 2
        return key.argsort(dim=1), differs.sum(dim=1)

    def _reset_pass(self, model, x0, y, current, found, shape) -> bool:
        """One pass of "set a coordinate back to the original if still adversarial"."""
        open_ = self._open(x0, current, found)
        order, count = self._order(x0, current, open_)
        changed = torch.zeros((), dtype=torch.bool, device=x0.device)
        for j in range(int(count.max())):
            rows = ((count > j) & open_).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            idx = order[rows, j]
            trial = current[rows]
            trial[torch.arange(rows.numel(), device=rows.device), idx] = x0[rows, idx]
            adv = misclassified(model, trial.reshape(-1, *shape), y[rows])
            rows, idx = rows[adv], idx[adv]
            current[rows, idx] = x0[rows, idx]
            changed = changed | adv.any()
            open_[rows] = perturbation_norm(current[rows] - x0[rows], self.norm) > self.eps
        return bool(changed)

    def _search_pass(self, model, x0, y, current, found, shape) -> bool:
        """One pass of per-coordinate binary searches towards the original value."""
        open_ = self._open(x0, current, found)
        order, count = self._order(x0, current, open_)
        improved = torch.zeros((), dtype=torch.bool, device=x0.device)
        for j in range(int(count.max())):
            rows = ((count > j) & open_).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            idx = order[rows, j]
            trial = current[rows]
            trial[torch.arange(rows.numel(), device=rows.device), idx] = x0[rows, idx]
            reset = misclassified(model, trial.reshape(-1, *shape), y[rows])
            current[rows[reset], idx[reset]] = x0[rows[reset], idx[reset]]
            improved = improved | reset.any()
            rows_s, idx_s = rows[~reset], idx[~reset]
            if rows_s.numel() > 0:
                improved = improved | self._bisect(model, x0, y, current, rows_s, idx_s, shape)
            open_[rows] = perturbation_norm(current[rows] - x0[rows], self.norm) > self.eps
        return bool(improved)

    def _bisect(self, model, x0, y, current, rows, idx, shape) -> torch.Tensor:
        """Move ``current[rows, idx]`` as close to ``x0`` as stays misclassified."""
        arange = torch.arange(rows.numel(), device=rows.device)
        trial = current[rows]
        adv_value = trial[arange, idx].clone()  # misclassified
        clean_value = x0[rows, idx].clone()  # classified correctly (just checked)
        for _ in range(self.search_steps):
            mid = (adv_value + clean_value) / 2
            trial[arange, idx] = mid
            adv = misclassified(model, trial.reshape(-1, *shape), y[rows])
            adv_value = torch.where(adv, mid, adv_value)
            clean_value = torch.where(adv, clean_value, mid)
        moved = adv_value != current[rows, idx]
        current[rows, idx] = adv_value
        return moved.any()
