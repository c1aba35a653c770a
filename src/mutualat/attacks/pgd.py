"""Projected gradient descent (ascent on the loss) in any lp ball.

Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks" (ICLR 2018); the l1 step is Maini et al.'s sparse step (ICML 2020),
see :class:`mutualat.attacks.threat.L1Threat`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mutualat.attacks.base import (
    ATTACKS, Attack, Example, check_positive, check_positive_int, warn_if_zero_gradient,
)
from mutualat.attacks.objectives import LossFn, input_gradient, resolve_objective
from mutualat.attacks.threat import LinfThreat, default_step_size, make_threat
from mutualat.errors import ConfigError

# Evaluation PGD (early_stop=True) freezes broken examples at every step (a masked step, no
# synchronisation) and drops them from the working batch, which saves their forward-backward
# passes. Finding them costs one device->host synchronisation: on the CPU that is free and
# is done at every step; on an accelerator, where a small model's step takes about a
# millisecond and a sync stalls the queue, only every _COMPACT_EVERY_ACCEL steps. On the CPU
# the batch is rebuilt as soon as one example broke (gathering a few tensors costs far less
# than carrying a dead row through a forward-backward pass: PGD-10 on a trained CNN went
# from 0.68 to 0.5x torchattacks' time); on an accelerator only once it has shrunk below
# _COMPACT_BELOW_ACCEL of its size, since every new batch size costs kernel launches for
# the gather and, with cudnn.benchmark, a new algorithm search.
_COMPACT_EVERY_ACCEL = 5
_COMPACT_BELOW_CPU = 1.0
_COMPACT_BELOW_ACCEL = 0.8

# TRADES (Zhang et al. 2019) starts its KL attack from x + 0.001 * N(0, 1).
_TRADES_INIT_STD = 1e-3


class _ZeroGradientCheck:
    """:func:`warn_if_zero_gradient` of the first step, without stalling a GPU's queue.

    On the CPU the check runs at once (a host sync costs nothing there). On CUDA the flag
    ``max |grad| == 0`` stays on the device, is copied into pinned host memory without
    blocking, and an event marks when it has arrived; the warning is raised by the first
    later call of the attack that finds the event complete. A model that masks gradients
    does so at every call, so the warning comes at the latest one call late, and the PGD
    loop never waits for the device.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[torch.Tensor, torch.cuda.Event]] = []

    def __call__(self, grad: torch.Tensor) -> None:
        if grad.device.type != "cuda":
            warn_if_zero_gradient(grad, "pgd")
            return
        flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        flag.copy_(grad.abs().amax() == 0, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((flag, event))

    def poll(self) -> None:
        """Warn for every finished check that found a zero gradient; never blocks."""
        waiting = []
        for flag, event in self._pending:
            if not event.query():
                waiting.append((flag, event))
            elif bool(flag):
                warnings.warn(
                    "pgd: the input gradient is exactly zero for the whole batch, so the "
                    "attack cannot move; the model may be constant or masking gradients (its "
                    "robust accuracy under gradient attacks says nothing).",
                    RuntimeWarning,
                    stacklevel=4,
                )
        self._pending = waiting


def _linf_update(delta: torch.Tensor, grad: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 step_size: float) -> torch.Tensor:
    """One l-inf PGD step: sign, add, clamp into the box ``[lo, hi]`` (ball within [0,1])."""
    return torch.add(delta, grad.sign(), alpha=step_size).clamp_(lo, hi)


_compiled_linf_update = None


def compiled_linf_update():
    """:func:`_linf_update` through ``torch.compile``: one fused kernel instead of three
    passes over the batch (``RunConfig.compile = "all"``). Same arithmetic, same results."""
    global _compiled_linf_update
    if _compiled_linf_update is None:
        _compiled_linf_update = torch.compile(_linf_update)
    return _compiled_linf_update


@ATTACKS.register("pgd", family="gradient", examples=(
    Example(dict(norm="linf", eps=8 / 255, steps=3)),
    Example(dict(norm="l2", eps=0.5, steps=3, restarts=2), "l2"),
    Example(dict(norm="l1", eps=5.0, steps=3, early_stop=True), "l1"),
    Example(dict(norm="linf", eps=8 / 255, steps=3, step_size=0.007, loss="lc"), "lc"),
    Example(dict(norm="linf", eps=8 / 255, steps=3, loss="trades_kl"), "trades"),
))
class PGD(Attack):
    """PGD with ``steps`` steepest-ascent steps and projections in the ``norm`` ball.

    Args:
        norm: "linf", "l2" or "l1".
        eps: radius of the ball (e.g. 8/255 for linf on CIFAR-10).
        steps: number of gradient steps (default 10).
        step_size: step length; default ``2.5 * eps / steps`` (for l1: per coordinate, see
            :func:`default_step_size`).
        random_start: start from a uniform point of the ball (as Madry et al.); with
            ``loss="trades_kl"`` from ``x + 0.001 * N(0, 1)`` instead, as TRADES does.
        restarts: number of runs; later runs always start at random. Per example the result
            of the best run is kept: a misclassifying run beats a correct one, ties are
            broken by the higher loss.
        loss: "ce", "lc" (MART's L_C, MAT's training attack), "cw" (margin), "dlr",
            "trades_kl" (KL(f(x) || f(x'))), or a callable
            ``(logits_adv, y, logits_clean) -> (B,)``.
        early_stop: evaluation mode: an example stops moving once misclassified (so what is
            returned for it is a misclassified point) and is dropped from the working batch.
            Off by default: training PGD is plain PGD.
        bn_mode: "eval" (default) or "train", see :func:`attack_mode`.

    Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) int64 -> ``x_adv`` (B, C, H, W).
    The inner loop does not synchronise with the host (no ``.item()``) unless
    ``early_stop``; the zero-gradient check of the first step waits for the device only on
    the CPU (on CUDA it is read back without blocking, see :class:`_ZeroGradientCheck`).
    """

    def __init__(
        self,
        norm: str = "linf",
        eps: float = 8 / 255,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str | LossFn = "ce",
        early_stop: bool = False,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        self.threat = make_threat(norm, eps)
        self.norm, self.eps = norm, eps
        self.steps = check_positive_int("steps", steps)
        self.step_size = (
            default_step_size(self.threat, steps)
            if step_size is None
            else check_positive("step_size", step_size)
        )
        self.random_start = bool(random_start)
        self.restarts = check_positive_int("restarts", restarts)
        self.loss = loss
        self._objective = resolve_objective(loss)
        if loss == "trades_kl" and not self.random_start:
            raise ConfigError(
                "loss='trades_kl' needs random_start=True: KL(f(x) || f(x')) has a zero "
                "gradient at x' = x, so PGD started at x never moves"
            )
        self.early_stop = bool(early_stop)
        self._zero_check = _ZeroGradientCheck()
        self._update = _linf_update  # compile_step() swaps in the compiled one

    def compile_step(self) -> "PGD":
        """Run the l-inf update step through ``torch.compile`` (performance only)."""
        self._update = compiled_linf_update()
        return self

    def _init(self, x: torch.Tensor, random: bool) -> torch.Tensor:
        if not random:
            return torch.zeros_like(x)
        if self.loss == "trades_kl":
            return self.threat.project(x, _TRADES_INIT_STD * torch.randn_like(x))
        return self.threat.random_init(x)

    def _stepper(self, x: torch.Tensor):
        """A function ``(x, delta, grad) -> delta`` for one step on the batch ``x``.

        linf fast path: the ball within the box is a box, so a step is sign, add, clamp
        (bounds computed once); other norms step and project.
        """
        if isinstance(self.threat, LinfThreat):
            lo, hi = self.threat.bounds(x)
            update, size = self._update, self.step_size
            return lambda x, delta, grad: update(delta, grad, lo, hi, size)

        def step(x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
            move = self.threat.ascent_step(grad, self.step_size, x_adv=x + delta)
            return self.threat.project(x, delta + move)

        return step

    def _run_plain(self, model, x, y, clean, delta) -> torch.Tensor:
        step = self._stepper(x)
        for t in range(self.steps):
            grad, _, _ = input_gradient(model, self._objective, x, y, delta, clean)
            if t == 0:
                self._zero_check(grad)
            delta = step(x, delta, grad)
        return delta

    def _run_early_stop(self, model, x, y, clean, delta) -> torch.Tensor:
        cpu = x.device.type == "cpu"
        every = 1 if cpu else _COMPACT_EVERY_ACCEL
        below = _COMPACT_BELOW_CPU if cpu else _COMPACT_BELOW_ACCEL
        out = delta.clone()
        idx = torch.arange(x.shape[0], device=x.device)  # rows of the working batch in `out`
        xa, ya, da, ca = x, y, delta, clean
        step = self._stepper(xa)
        for t in range(self.steps):
            grad, logits, _ = input_gradient(model, self._objective, xa, ya, da, ca)
            if t == 0:
                self._zero_check(grad)
            correct = logits.argmax(dim=1) == ya
            da = torch.where(correct.reshape(-1, 1, 1, 1), step(xa, da, grad), da)
            if (t + 1) % every == 0 and t + 1 < self.steps:
                keep = correct.nonzero().squeeze(1)  # the one synchronisation
                if keep.numel() < below * ya.shape[0]:
                    out[idx] = da
                    if keep.numel() == 0:
                        return out
                    idx, xa, ya, da = idx[keep], xa[keep], ya[keep], da[keep]
                    ca = None if ca is None else ca[keep]
                    step = self._stepper(xa)
        out[idx] = da
        return out

    def run_once(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 clean: torch.Tensor | None, random: bool) -> torch.Tensor:
        """One PGD run from a (random) start; returns ``delta``."""
        delta = self._init(x, random)
        run = self._run_early_stop if self.early_stop else self._run_plain
        return run(model, x, y, clean, delta)

    @torch.enable_grad()  # the attack differentiates even when called under no_grad
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._zero_check.poll()
        clean = None
        if self._objective.needs_clean:
            with torch.no_grad():
                clean = model(x).detach()
        best = self.run_once(model, x, y, clean, self.random_start)
        if self.restarts == 1:
            return self.threat.finalize(x, best)
        best_wrong, best_loss = self._score(model, x, y, clean, best)
        for _ in range(self.restarts - 1):
            delta = self.run_once(model, x, y, clean, True)
            wrong, loss = self._score(model, x, y, clean, delta)
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
            best = torch.where(better.reshape(-1, 1, 1, 1), delta, best)
            best_wrong = best_wrong | wrong
            best_loss = torch.where(better, loss, best_loss)
        return self.threat.finalize(x, best)

    @torch.no_grad()
    def _score(self, model, x, y, clean, delta) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x + delta)
        return logits.argmax(dim=1) != y, self._objective.fn(logits, y, clean)
