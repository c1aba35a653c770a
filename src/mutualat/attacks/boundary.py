"""Boundary attack: decision-based l2 attack that walks along the decision boundary.

Brendel, Rauber, Bethge, "Decision-Based Adversarial Attacks: Reliable Attacks Against
Black-Box Machine Learning Models" (ICLR 2018); in the l2 suites of Maini et al. (ICML 2020)
and of the MAT paper (Table 5). Follows foolbox's (v3) batched ``BoundaryAttack``.
"""

from __future__ import annotations

import torch
from torch import nn

from mutualat.attacks.base import ATTACKS, Attack, Example, check_positive, check_positive_int
from mutualat.attacks.noise import check_norm, judge_at_eps, misclassified
from mutualat.errors import ConfigError

# Foolbox stops an example once its source step has shrunk below this: it has converged.
_CONVERGED = 1e-7
# Step-size adaptation thresholds of Brendel et al. / foolbox: the orthogonal (spherical)
# step should land on the adversarial side about half of the time, the full candidate
# (spherical + source step) between 10% and 25% of the time.
_SPHERICAL_HIGH, _SPHERICAL_LOW = 0.5, 0.2
_STEP_HIGH, _STEP_LOW = 0.25, 0.1


@ATTACKS.register("boundary", family="decision", examples=(
    Example(dict(eps=0.3, steps=30, init_draws=20, init_search_steps=8),
            strong=dict(eps=2.0, steps=200, init_draws=50)),
))
class Boundary(Attack):
    """Start from a misclassified blended-noise image; then, per step and per example, try an
    orthogonal step on the sphere around ``x`` followed by a step towards ``x``, and keep it
    if still misclassified and closer.

    Start (foolbox's ``LinearSearchBlendedUniformNoiseAttack``, with a bisection instead of
    a linear search): up to ``init_draws`` uniform-noise images until one is misclassified,
    then ``init_search_steps`` bisections of the blend ``(1 - a) x + a noise`` for the
    smallest misclassified ``a``. Step sizes are relative to the current distance; every
    ``adapt_every`` steps each example's spherical and source steps are multiplied or
    divided by ``step_adaptation`` from the success rates over those steps (thresholds as
    in foolbox). All examples move together: one batched query of the candidates and of the
    spherical candidates per step, on the examples still open. An example stops when it is
    inside the eps ball (the attack is judged at eps) or its source step has converged;
    the result is that point, its projection onto the ball, or ``x`` if no start was found.

    Args:
        norm: must be "l2".
        eps: l2 radius at which the result is judged (default 0.5).
        steps: most steps (default 1000; foolbox's 25,000 are far too many for a suite run
            over a whole test set; raise it for a stronger attack).
        spherical_step: initial orthogonal step, relative to the distance (default 0.01).
        source_step: initial step towards ``x``, relative to the distance (default 0.01).
        step_adaptation: factor of the step-size adaptation (default 1.5).
        adapt_every: steps between adaptations (default 10; foolbox gathers statistics every
            10 steps over a window of 100 or 30 of them, too slow for 1000 steps).
        init_draws: uniform-noise draws for the start (default 100).
        init_search_steps: bisections of the blend (default 20).
        bn_mode: "eval" (default) or "train".

    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> ``x_adv`` (B, C, H, W).
    """

    minimum_norm = True

    def __init__(
        self,
        norm: str = "l2",
        eps: float = 0.5,
        steps: int = 1000,
        spherical_step: float = 1e-2,
        source_step: float = 1e-2,
        step_adaptation: float = 1.5,
        adapt_every: int = 10,
        init_draws: int = 100,
        init_search_steps: int = 20,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        self.norm = check_norm("boundary", norm, ("l2",))
        self.eps = check_positive("eps", eps)
        self.steps = check_positive_int("steps", steps)
        self.spherical_step = check_positive("spherical_step", spherical_step)
        self.source_step = check_positive("source_step", source_step)
        if not check_positive("step_adaptation", step_adaptation) > 1:
            raise ConfigError(f"step_adaptation must be > 1, got {step_adaptation!r}")
        self.step_adaptation = float(step_adaptation)
        self.adapt_every = check_positive_int("adapt_every", adapt_every)
        self.init_draws = check_positive_int("init_draws", init_draws)
        self.init_search_steps = check_positive_int("init_search_steps", init_search_steps)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start, found = self._start(model, x, y)
        b, shape = x.shape[0], x.shape[1:]
        x0 = x.reshape(b, -1)
        best = start.reshape(b, -1).clone()
        spherical = torch.full((b,), self.spherical_step, device=x.device, dtype=x.dtype)
        source = torch.full((b,), self.source_step, device=x.device, dtype=x.dtype)
        spherical_hits = torch.zeros(b, device=x.device)
        step_hits = torch.zeros(b, device=x.device)
        for step in range(1, self.steps + 1):
            dist = (x0 - best).norm(dim=1)
            open_ = found & (dist > self.eps) & (source >= _CONVERGED)
            rows = open_.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            cand, sph = self._proposals(x0[rows], best[rows], dist[rows],
                                        spherical[rows], source[rows])
            adv = misclassified(model, torch.cat([cand, sph]).reshape(-1, *shape),
                                y[rows].repeat(2))
            cand_adv, sph_adv = adv[: rows.numel()], adv[rows.numel():]
            closer = (x0[rows] - cand).norm(dim=1) < dist[rows]
            accept = cand_adv & closer
            best[rows[accept]] = cand[accept]
            spherical_hits[rows] += sph_adv.float()
            step_hits[rows] += cand_adv.float()
            if step % self.adapt_every == 0:
                self._adapt(spherical, source, spherical_hits / self.adapt_every,
                            step_hits / self.adapt_every)
                spherical_hits.zero_()
                step_hits.zero_()
        return judge_at_eps(x, best.reshape(x.shape), found, self.norm, self.eps)

    def _proposals(self, x0, best, dist, spherical, source):
        """Foolbox's candidate generation: ``(candidates, spherical candidates)``, (n, D)."""
        diff = x0 - best
        direction = diff / dist[:, None]
        # A random direction orthogonal to the source direction, of length spherical * dist.
        eta = torch.randn_like(x0)
        eta = eta - (eta * direction).sum(dim=1, keepdim=True) * direction
        eta = eta * (spherical * dist / eta.norm(dim=1).clamp_min(1e-12))[:, None]
        # Back onto the sphere of radius dist around x0 (Pythagoras), then into [0,1].
        sph = (x0 + (eta - diff) / (spherical.square() + 1).sqrt()[:, None]).clamp(0.0, 1.0)
        # A step of source * dist towards x0, corrected for the clipping's drift off the sphere.
        towards = x0 - sph
        towards_norm = towards.norm(dim=1).clamp_min(1e-12)
        length = (source * dist + towards_norm - dist).clamp_min(0.0) / towards_norm
        cand = (sph + length[:, None] * towards).clamp(0.0, 1.0)
        return cand, sph

    def _adapt(self, spherical, source, spherical_rate, step_rate) -> None:
        a = self.step_adaptation
        up = spherical_rate > _SPHERICAL_HIGH
        down = spherical_rate < _SPHERICAL_LOW
        factor = torch.where(up, a, torch.where(down, 1 / a, 1.0)).to(spherical)
        spherical.mul_(factor)
        source.mul_(factor)
        up = step_rate > _STEP_HIGH
        down = step_rate < _STEP_LOW
        source.mul_(torch.where(up, a, torch.where(down, 1 / a, 1.0)).to(source))

    def _start(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """A misclassified point near ``x``: blended uniform noise, bisected to the boundary."""
        noise = x.clone()
        found = misclassified(model, x, y)
        clean_wrong = found.clone()
        for _ in range(self.init_draws):
            if bool(found.all()):
                break
            candidate = torch.rand_like(x)
            new = ~found & misclassified(model, candidate, y)
            noise = torch.where(new.reshape(-1, 1, 1, 1), candidate, noise)
            found = found | new
        # Bisect the blend factor: hi is misclassified (the noise itself), lo is not (x).
        lo = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        hi = torch.ones_like(lo)
        search = found & ~clean_wrong
        for _ in range(self.init_search_steps):
            mid = (lo + hi) / 2
            m = mid.reshape(-1, 1, 1, 1)
            adv = misclassified(model, (1 - m) * x + m * noise, y)
            hi = torch.where(search & adv, mid, hi)
            lo = torch.where(search & ~adv, mid, lo)
        h = hi.reshape(-1, 1, 1, 1)
        start = torch.where(clean_wrong.reshape(-1, 1, 1, 1), x, (1 - h) * x + h * noise)
        return start, found
