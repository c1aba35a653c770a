"""Threats: what a perturbation may do, and the geometry of its lp ball around a [0,1] image.

:class:`Threat` is the one description of a threat the project uses everywhere: the
training attack of a config (``RunConfig.attack.threat``), MAT-MP's and AT-MAX's list of
threats, the lp threats of an evaluation suite, and what a model file records it was
trained against. It is validated once, here, when it is made.

:class:`ThreatModel` and its subclasses are the geometry of one ball (random start,
steepest-ascent step, projection), shared by every attack loop.

Kept apart from the attack loops (as MadryLab/robustness's ``attack_steps.py`` does) so that
PGD, MSD, APGD and the training methods share one random start, one steepest-ascent step and
one projection per norm. Every method works on batches: ``x`` and ``delta`` are
``(B, C, H, W)``, norms are ``(B,)``.

Projection is always "onto the ball, then clip ``x + delta`` into [0,1]". Clipping moves
every coordinate of ``delta`` towards 0 (because ``x`` is in [0,1]), so it never leaves
the ball: the result is inside both sets, although for l2 and l1 it is not the exact
projection onto their intersection (neither is it in any of the peer implementations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mutualat.errors import ConfigError, FieldError

NORMS = ("linf", "l2", "l1")


@dataclass(frozen=True)
class Threat:
    """An lp ball of radius ``eps`` around a [0,1] image and the PGD that searches it in
    training: ``steps`` iterations of ``step_size`` (None: Madry's rule, the steps travel
    2.5 eps; for l1 the per-coordinate move at k = 20 coordinates) from a uniform random
    point of the ball (``random_start``) or from the image itself. ``steps = 0`` means no
    attack (natural training on the clean image)."""

    norm: str
    eps: float
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise FieldError("norm", f"must be one of {', '.join(NORMS)}; unknown norm {self.norm!r}")
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
                or eps <= 0:
            raise FieldError("eps", f"must be a finite number > 0, got {eps!r}")
        if self.norm == "linf" and eps > 1:
            raise FieldError("eps", f"(= {eps}) is larger than the [0,1] pixel range for linf")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise FieldError("steps", f"must be an integer >= 0, got {self.steps!r}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise FieldError("step_size", f"must be a finite number > 0 (or null), got {self.step_size}")

    @property
    def ball(self) -> "ThreatModel":
        """The geometry of the ball (:func:`make_threat`)."""
        return make_threat(self.norm, self.eps)

    def resolved_step_size(self) -> float:
        """``step_size``, or Madry's rule when it is None (see the class docstring)."""
        if self.step_size is not None:
            return self.step_size
        return default_step_size(self.ball, max(self.steps, 1))

    def record(self) -> dict[str, float | str]:
        """What a model file keeps of it: the ball (``{"norm", "eps"}``)."""
        return {"norm": self.norm, "eps": float(self.eps)}

# Guards the l2 normalisation of an all-zero gradient (a constant model): the step is then
# 0 instead of NaN.
_TINY = 1e-12


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(B,)`` tensor to broadcast over ``like`` of shape ``(B, ...)``."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def clip_to_box(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Return ``delta`` with ``x + delta`` clipped into [0,1]."""
    return (x + delta).clamp(0.0, 1.0) - x


@dataclass(frozen=True)
class ThreatModel:
    """The ball ``{delta : ||delta||_p <= eps}`` intersected with ``x + delta`` in [0,1]."""

    norm: str
    eps: float

    def __post_init__(self) -> None:
        if not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps) or self.eps <= 0:
            raise ConfigError(
                f"{self.norm} threat model: eps must be a finite number > 0, got {self.eps!r}"
            )

    def random_init(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A random start ``delta`` inside the ball with ``x + delta`` in [0,1]."""
        raise NotImplementedError

    def ascent_step(
        self,
        grad: torch.Tensor,
        step_size: float,
        x_adv: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The steepest-ascent step of length ``step_size`` in this norm along ``grad``.

        ``x_adv`` (the current point) is needed only by the l1 step, which skips
        coordinates that would leave [0,1].
        """
        raise NotImplementedError

    def project_ball(self, delta: torch.Tensor, radius: float | None = None) -> torch.Tensor:
        """Exact Euclidean projection of each ``delta`` onto the ball (no box).

        ``radius`` defaults to ``eps``.
        """
        raise NotImplementedError

    def project(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Project onto the ball, then clip ``x + delta`` into [0,1]."""
        return clip_to_box(x, self.project_ball(delta))

    def finalize(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The adversarial image ``x + delta`` an attack returns, guaranteed inside the ball.

        Forming ``x + delta`` in floating point rounds every pixel by up to half an ulp
        (2^-25 in float32), so the realised perturbation ``x_adv - x`` of a point exactly on
        the sphere can leave the ball by ``d * 2^-25`` in l1 (1e-4 for CIFAR-10, more than a
        checker's tolerance). The last projection therefore uses a radius shrunk by that
        bound; the loops in between use the exact projection.
        """
        half_ulp = torch.finfo(x.dtype).eps / 2
        slack = half_ulp * self.diameter(x[0].numel())
        radius = max(self.eps - slack, self.eps / 2)
        return (x + self.project_ball(delta, radius)).clamp(0.0, 1.0)

    def diameter(self, numel: int) -> float:
        """The largest norm of ``x - x'`` between two inputs of ``numel`` values in [0,1]: 1
        in linf, sqrt(numel) in l2, numel in l1. A ball of this radius holds every input."""
        return {"linf": 1.0, "l2": math.sqrt(numel), "l1": float(numel)}[self.norm]

    def norm_of(self, delta: torch.Tensor) -> torch.Tensor:
        """The ``(B,)`` norms of a batch of perturbations.

        l2 and l1 norms are accumulated (and returned) in float64: a float32 sum over 3,072
        coordinates is off by about 1e-6, as much as the tolerance a caller checks with.
        """
        raise NotImplementedError

    def contains(self, x: torch.Tensor, x_adv: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """``(B,)`` bool: ``x_adv`` lies in the ball around ``x`` (up to ``tol``) and in [0,1]."""
        in_box = _flat((x_adv >= -tol) & (x_adv <= 1 + tol)).all(dim=1)
        return in_box & (self.norm_of(x_adv - x) <= self.eps + tol)


class LinfThreat(ThreatModel):
    def random_init(self, x, generator=None):
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return clip_to_box(x, (2 * u - 1) * self.eps)

    def ascent_step(self, grad, step_size, x_adv=None, generator=None):
        return step_size * grad.sign()

    def project_ball(self, delta, radius=None):
        r = self.eps if radius is None else radius
        return delta.clamp(-r, r)

    def bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ball intersected with the box is itself a box: ``delta`` in ``[lo, hi]``.

        ``delta.clamp(lo, hi)`` equals :meth:`project` in one operation; PGD's linf loop
        computes the bounds once per run.
        """
        return (-x).clamp(min=-self.eps), (1 - x).clamp(max=self.eps)

    def norm_of(self, delta):
        return _flat(delta).abs().amax(dim=1)


class L2Threat(ThreatModel):
    def random_init(self, x, generator=None):
        # Uniform in the ball: a Gaussian direction and radius eps * U^(1/d).
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        d = g[0].numel()
        u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        radius = self.eps * u.pow(1.0 / d)
        g = g / _per_example(_flat(g).norm(dim=1).clamp_min(_TINY), g)
        return clip_to_box(x, g * _per_example(radius, g))

    def ascent_step(self, grad, step_size, x_adv=None, generator=None):
        norms = _flat(grad).norm(dim=1).clamp_min(_TINY)
        return step_size * grad / _per_example(norms, grad)

    def project_ball(self, delta, radius=None):
        r = self.eps if radius is None else radius
        norms = _flat(delta).norm(dim=1)
        factor = (r / norms.clamp_min(_TINY)).clamp(max=1.0)
        return delta * _per_example(factor, delta)

    def norm_of(self, delta):
        return _flat(delta).double().norm(dim=1)


def project_l1_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection of each row of a batch onto ``{||v||_1 <= eps}``.

    Duchi, Shalev-Shwartz, Singer, Chandra, "Efficient Projections onto the l1-Ball for
    Learning in High Dimensions" (ICML 2008), Fig. 1: sort ``|v|`` decreasingly, find the
    largest ``rho`` with ``u_rho > (sum_{j<=rho} u_j - eps) / rho``, soft-threshold by
    ``theta = (sum_{j<=rho} u_j - eps) / rho``. Vectorised over the batch; rows already
    inside the ball are returned unchanged. The threshold is computed in float64 so that the
    result's norm does not exceed ``eps`` by more than rounding of the final subtraction.
    """
    flat = _flat(delta)
    abs_v = flat.abs().double()
    inside = abs_v.sum(dim=1) <= eps
    u, _ = abs_v.sort(dim=1, descending=True)
    cssv = u.cumsum(dim=1) - eps
    ranks = torch.arange(1, u.shape[1] + 1, device=u.device, dtype=u.dtype)
    # The condition holds for a prefix of the sorted coordinates; its length is rho.
    rho = (u * ranks > cssv).sum(dim=1).clamp_min(1)
    theta = cssv.gather(1, (rho - 1)[:, None]).squeeze(1) / rho.to(u.dtype)
    theta = torch.where(inside, torch.zeros_like(theta), theta.clamp_min(0))
    shrunk = (abs_v - theta[:, None]).clamp_min(0).to(flat.dtype) * flat.sign()
    out = torch.where(inside[:, None], flat, shrunk)
    return out.reshape(delta.shape)


class L1Threat(ThreatModel):
    """l1 ball with Maini et al.'s sparse steepest-ascent step.

    Maini, Wong, Kolter, "Adversarial Robustness Against the Union of Multiple Perturbation
    Models" (ICML 2020), Sec. 4 and their code (``l1_dir_topk`` in locuslab/robust_union).
    Our reading of that code: ``k`` is an absolute number of coordinates (not a percentage),
    drawn uniformly from {5, ..., 20} at every step, once for the whole batch; the ``k``
    coordinates with the largest ``|grad|`` among those still free to move are moved by
    ``sign(grad) * step_size * 20 / k`` each, so one step always moves ``20 * step_size`` in
    l1 whatever ``k``. A coordinate is not free when the move would take ``x_adv`` out of
    [0,1] (the code approximates this with a gap equal to the step size). ``step_size`` is
    therefore the per-coordinate move at ``k = 20`` (their default 0.05 for eps 12).
    """

    k_min: int = 5
    k_max: int = 20

    def random_init(self, x, generator=None):
        # Uniform in the l1 ball: a Laplace vector normalised to the l1 sphere is uniform on
        # it, and the radius eps * U^(1/d) makes the point uniform in the ball.
        e = torch.empty(x.shape, device=x.device, dtype=x.dtype).exponential_(generator=generator)
        s = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        lap = e * s
        d = lap[0].numel()
        u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        radius = self.eps * u.pow(1.0 / d)
        lap = lap / _per_example(_flat(lap).abs().sum(dim=1).clamp_min(_TINY), lap)
        return clip_to_box(x, lap * _per_example(radius, lap))

    def ascent_step(self, grad, step_size, x_adv=None, generator=None):
        if x_adv is None:
            raise ValueError("the l1 step needs the current point x_adv to skip saturated pixels")
        # Drawn on the CPU so that no device synchronisation is needed.
        k = int(torch.randint(self.k_min, self.k_max + 1, (1,), generator=_cpu(generator)))
        move = step_size * self.k_max / k
        g = _flat(grad)
        xa = _flat(x_adv)
        free = ((g > 0) & (xa + move <= 1)) | ((g < 0) & (xa - move >= 0))
        score = torch.where(free, g.abs(), torch.zeros_like(g))
        k = min(k, g.shape[1])
        top = score.topk(k, dim=1).indices
        # A zero score (no free coordinate, or a zero gradient) gives sign 0: no move.
        direction = torch.zeros_like(g).scatter_(1, top, (g.gather(1, top).sign()
                                                          * free.gather(1, top)))
        return (move * direction).reshape(grad.shape)

    def project_ball(self, delta, radius=None):
        return project_l1_ball(delta, self.eps if radius is None else radius)

    def norm_of(self, delta):
        return _flat(delta).double().abs().sum(dim=1)


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    return generator if generator is None or generator.device.type == "cpu" else None


_THREATS: dict[str, Callable[[str, float], ThreatModel]] = {
    "linf": LinfThreat,
    "l2": L2Threat,
    "l1": L1Threat,
}


def check_within_inputs(key: str, norm: str, eps: float, input_shape: Sequence[int]) -> None:
    """Refuse, naming the config ``key``, an ``eps`` larger than the diameter of the [0,1]
    inputs of ``input_shape`` (C, H, W) in ``norm``: such a ball reaches every image from every
    other, so an attack in it can turn any image into any other, and training learns nothing."""
    diameter = make_threat(norm, eps).diameter(math.prod(input_shape))
    if eps > diameter:
        shape = "x".join(map(str, input_shape))
        raise ConfigError(
            f"{key}={eps:g} is larger than the {norm} diameter of the input space ({diameter:g} "
            f"for {shape} images in [0,1]): the ball would reach every image from every other; "
            "choose a smaller eps"
        )


def recorded_threats(record: dict) -> list[Threat]:
    """The threats a model file's record says its model was trained against: ``threats``
    (files written since the records kept every type), else the ``threats`` of the method's
    parameters (multi-type methods' older files, whose ``threat`` held the unused
    ``attack.eps``), else the single ``threat``; [] when it records none (a foreign model)."""
    if isinstance(record.get("threats"), list):
        entries = record["threats"]
    elif isinstance((record.get("method") or {}).get("threats"), list):
        entries = record["method"]["threats"]
    elif isinstance(record.get("threat"), dict):
        entries = [record["threat"]]
    else:
        entries = []
    return [Threat(e["norm"], float(e["eps"])) for e in entries if e.get("norm") in NORMS]


def default_step_size(threat: ThreatModel, steps: int) -> float:
    """Madry et al.'s rule of thumb: the steps together travel 2.5 eps.

    For l1 the step size is the per-coordinate move at k = 20 coordinates, so one step
    travels ``20 * step_size`` in l1 (see :class:`L1Threat`).
    """
    travel = 2.5 * threat.eps / steps
    return travel / 20 if threat.norm == "l1" else travel


def make_threat(norm: str, eps: float) -> ThreatModel:
    """Build the threat model ``norm`` in {"linf", "l2", "l1"} of radius ``eps``."""
    try:
        cls = _THREATS[norm]
    except KeyError:
        raise ConfigError(
            f"unknown norm {norm!r}; known: {', '.join(sorted(_THREATS))}"
        ) from None
    return cls(norm, eps)
