"""Run a cohort of same-architecture models as one batched computation.

MAT (SPEC.md section 2) runs, per step and per member, a K-step attack, a clean forward and
an adversarial forward. For N members of one architecture these are N copies of the same
kernels on different weights. :class:`BatchedCohort` stacks the members' parameters and
buffers along a new leading dimension and evaluates all members in one call with
``torch.func.functional_call`` under ``torch.func.vmap`` (convolutions become grouped
convolutions, matrix products batched products), so a GPU sees N times bigger kernels and
N times fewer launches.

Interface: the cohort is itself a model of the flattened, member-major batch. Its input is
``(N * B, C, H, W)``: rows ``n * B .. (n + 1) * B - 1`` are member n's images; its output
``(N * B, K)`` the corresponding logits. Every attack therefore runs on it unchanged (an
attack treats examples independently, and member n's logits depend only on member n's
rows), and :func:`mutualat.attacks.attack_mode` switches every member's mode because the
members are submodules of the cohort.

Batch-norm keeps per-member statistics: in train mode each member normalises with the
statistics of its own B rows (vmap slices the batch per member) and its running averages
are updated in the stacked buffer, which is written back to the member after the call.
Gradients reach each member's own parameters through ``torch.stack``, so the members'
optimizers are untouched.

What differs from the plain loop: random numbers are drawn for the whole cohort at once
(PGD's random start, the l1 step's k, dropout masks), so the draws are not those of the
loop; floating-point results agree up to summation order.

Whether the batched path is faster depends on the device and the shapes: on this project's
CPU the batched attack step of a pair of small CNNs took 1.27x the loop's (earlier: about
even), so ``"auto"`` uses the loop on the CPU and, on an accelerator, times one
input-gradient pass of both paths on the real shapes once (:func:`decide`). See
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from mutualat.errors import ConfigError

#: ``RunConfig.cohort_batch``: "auto" (see :func:`decide`), "batched" (always, where the
#: members allow it, else an error), "loop" (always the loop). Not on/off: YAML reads
#: those as booleans.
MODES = ("auto", "batched", "loop")

# "auto" picks the batched path only when it is clearly faster: timings on a shared
# machine move by a few percent, and the loop is the reference implementation.
_MARGIN = 0.95
_REPEATS = 3


def incompatibility(models: Sequence[nn.Module]) -> str | None:
    """Why ``models`` cannot run as one batched cohort, or ``None`` if they can.

    They can when they are at least two, of one class with the same structure (the same
    ``repr``: layers, kernel sizes, dropout rates...), the same parameter and buffer names,
    shapes and dtypes, on one device, and every module of every member is in the same mode.
    """
    if len(models) < 2:
        return "fewer than two members"
    first = models[0]
    if any(isinstance(m, nn.parallel.DistributedDataParallel) for m in models):
        # Its gradient all-reduce hooks run only through its own forward.
        return "DistributedDataParallel-wrapped members"

    def layout(m: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype, torch.device]]:
        named = list(m.named_parameters()) + list(m.named_buffers())
        return [(k, tuple(v.shape), v.dtype, v.device) for k, v in named]

    reference = layout(first)
    for m in models[1:]:
        if type(m) is not type(first):
            return f"different architectures ({type(first).__name__}, {type(m).__name__})"
        if layout(m) != reference:
            return "different parameter/buffer names, shapes, dtypes or devices"
        if _structure(m) != _structure(first):
            return "different layer settings"
        if getattr(m, "_compiled_call_impl", None) is not None:
            return "a torch.compile'd member (the batched path calls the plain forward)"
    if getattr(first, "_compiled_call_impl", None) is not None:
        return "a torch.compile'd member (the batched path calls the plain forward)"
    return None


def _structure(m: nn.Module) -> str:
    # repr lists every layer with its settings; Normalize prints its mean/std values, which
    # are buffers (stacked like any other), so they are left out of the comparison.
    return "\n".join(type(s).__name__ + ("" if type(s).__name__ == "Normalize" else s.extra_repr())
                     for s in m.modules())


def _modes(m: nn.Module) -> list[bool]:
    return [s.training for s in m.modules()]


class BatchedCohort(nn.Module):
    """N models of one architecture as one model of the member-major batch ``(N * B, ...)``.

    ``cohort(x)`` with ``x`` of shape ``(N * B, C, H, W)`` returns ``(N * B, K)``, equal (up to
    floating-point summation order) to ``cat([m_n(x[n*B:(n+1)*B]) for n])``, with batch-norm
    statistics per member. Each call stacks the parameters and buffers; inside
    :meth:`stacked` they are stacked once for many calls (an attack's K steps).
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        reason = incompatibility(models)
        if reason is not None:
            raise ConfigError(f"these models cannot run as one batched cohort: {reason}")
        self.members = nn.ModuleList(models)
        self._stack: tuple[dict, dict, bool] | None = None  # params, buffers, with grad
        self._dirty = False  # a train-mode forward moved the stacked buffers

    def __len__(self) -> int:
        return len(self.members)

    def _stack_now(self, grad: bool) -> tuple[dict, dict, bool]:
        members = list(self.members)
        names = [k for k, _ in members[0].named_parameters()]
        per_member = [dict(m.named_parameters()) for m in members]
        with torch.set_grad_enabled(grad):
            # With grad, torch.stack carries each member's gradient back to its own leaf.
            params = {k: torch.stack([p[k] for p in per_member]) for k in names}
        with torch.no_grad():
            per_buffers = [dict(m.named_buffers()) for m in members]
            buffers = {k: torch.stack([b[k] for b in per_buffers])
                       for k, _ in members[0].named_buffers()}
        return params, buffers, grad

    @torch.no_grad()
    def _write_back(self, buffers: dict[str, torch.Tensor]) -> None:
        for n, m in enumerate(self.members):
            for k, b in m.named_buffers():
                b.copy_(buffers[k][n])

    @contextlib.contextmanager
    def stacked(self, grad: bool) -> Iterator["BatchedCohort"]:
        """Stack parameters and buffers once for every call inside the block.

        ``grad=True`` keeps the parameters' autograd history (a training forward);
        ``grad=False`` stacks detached copies (an attack, a target under no_grad). Buffers
        moved by train-mode forwards are written back to the members when the block ends.
        """
        if self._stack is not None:
            raise RuntimeError("BatchedCohort.stacked blocks do not nest")
        self._stack, self._dirty = self._stack_now(grad), False
        try:
            yield self
        finally:
            _, buffers, _ = self._stack
            self._stack = None
            if self._dirty:
                self._write_back(buffers)
            self._dirty = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.members)
        if x.shape[0] % n:
            raise ValueError(f"a cohort of {n} needs a batch divisible by {n}, got {x.shape[0]}")
        template = self.members[0]
        modes = _modes(template)
        if any(_modes(m) != modes for m in self.members[1:]):
            raise RuntimeError("the members of a batched cohort must all be in the same mode")
        own = self._stack is None
        params, buffers, _ = self._stack if not own else self._stack_now(torch.is_grad_enabled())
        xs = x.reshape(n, x.shape[0] // n, *x.shape[1:])

        def member(p: dict, b: dict, xm: torch.Tensor) -> torch.Tensor:
            return functional_call(template, (p, b), (xm,))

        # Each member draws its own dropout masks, as separate models would.
        out = vmap(member, randomness="different")(params, buffers, xs)
        if template.training:
            if own:
                self._write_back(buffers)
            else:
                self._dirty = True
        return out.reshape(x.shape[0], *out.shape[2:])


def repeat_for(n: int, x: torch.Tensor) -> torch.Tensor:
    """``x`` of shape ``(B, ...)`` repeated for ``n`` members: ``(n * B, ...)``, member-major,
    in ``x``'s memory format."""
    fmt = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
           and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    return x.repeat(n, *([1] * (x.dim() - 1))).contiguous(memory_format=fmt)


@dataclass
class CohortChoice:
    """What a run does with its cohort, recorded in the run's log (event "speed")."""

    batched: bool
    reason: str
    members: int = 0
    loop_ms: float | None = None  # one input-gradient pass of every member, looped
    batched_ms: float | None = None  # the same as one batched pass

    def record(self) -> dict[str, object]:
        return {f"cohort_{k}": v for k, v in asdict(self).items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _input_gradient_pass(model: nn.Module, x: torch.Tensor) -> None:
    xg = x.detach().requires_grad_(True)
    torch.autograd.grad(model(xg).float().sum(), xg)


def time_paths(models: Sequence[nn.Module], x: torch.Tensor,
               repeats: int = _REPEATS) -> tuple[float, float]:
    """Median seconds of one input-gradient pass (an attack step) of every member: looped,
    and as one batched cohort. Eval mode (modes restored), parameters untouched, no global
    random numbers drawn; runs under whatever autocast the caller set."""
    from mutualat.attacks import attack_mode

    cohort = BatchedCohort(models)
    xs = repeat_for(len(models), x)

    def loop() -> None:
        for m in models:
            _input_gradient_pass(m, x)

    def batched() -> None:
        with cohort.stacked(grad=False):
            _input_gradient_pass(cohort, xs)

    times: dict[str, list[float]] = {"loop": [], "batched": []}
    with attack_mode(cohort, "eval"), torch.enable_grad():
        loop(), batched()  # warm-up: allocator, cuDNN algorithm search
        for r in range(repeats):
            order = [("loop", loop), ("batched", batched)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                _sync(x.device)
                tick = time.perf_counter()
                fn()
                _sync(x.device)
                times[name].append(time.perf_counter() - tick)
    return statistics.median(times["loop"]), statistics.median(times["batched"])


def trial(models: Sequence[nn.Module], x: torch.Tensor) -> str | None:
    """Run one train-mode forward and backward of the batched cohort on ``x``; return the
    error it raised, or ``None``. Buffers, modes, parameters and the random state are left
    as they were; runs under whatever autocast the caller set.

    Why: kernels differ by device and precision. On an H200 with bf16 autocast and
    channels_last, batch-norm's backward under vmap failed for a small CNN ("Expected
    running_mean to have type BFloat16 but got Float") while ResNet-18 and WRN-34-10 ran,
    so "auto" tries the path before choosing it.
    """
    cohort = BatchedCohort(models)
    xs = repeat_for(len(models), x)
    modes = [_modes(m) for m in models]
    devices = [x.device] if x.device.type == "cuda" else []
    # Detached copies of the parameters and buffers: nothing of the members is touched.
    params, buffers, _ = cohort._stack_now(grad=False)
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            cohort.train()
            cohort._stack = (params, buffers, True)
            torch.autograd.grad(cohort(xs).float().sum(), list(params.values()))
        return None
    except RuntimeError as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        cohort._stack = None
        for m, flags in zip(models, modes):
            for sub, flag in zip(m.modules(), flags):
                sub.training = flag


def decide(mode: str, models: Sequence[nn.Module], x: torch.Tensor | None) -> CohortChoice:
    """Loop or batched cohort for ``models`` on batches shaped like ``x`` ``(B, C, H, W)``.

    ``"loop"``: the loop. ``"batched"``: batched (a :class:`ConfigError` if the members cannot be
    batched, or a :func:`trial` step on ``x`` fails). ``"auto"``: the loop on the CPU
    (measured no faster there, and the loop is the reference), else batched if a :func:`trial`
    step runs and one timed input-gradient pass (:func:`time_paths`) is at least 5% faster
    batched than looped.
    """
    if mode not in MODES:
        raise ConfigError(f"cohort_batch must be one of {', '.join(MODES)}, got {mode!r}")
    n = len(models)
    if mode == "loop":
        return CohortChoice(False, "cohort_batch=loop", n)
    reason = incompatibility(models)
    if reason is not None:
        if mode == "batched":
            raise ConfigError(f"cohort_batch=batched, but the members cannot be batched: {reason}")
        return CohortChoice(False, reason, n)
    if mode == "batched":
        failed = None if x is None else trial(models, x)
        if failed is not None:
            raise ConfigError(f"cohort_batch=batched, but the batched cohort fails here: {failed}")
        return CohortChoice(True, "cohort_batch=batched", n)
    if x is None or x.device.type == "cpu":
        return CohortChoice(False, "cpu: the batched path measured no faster than the loop "
                                   "(docs/PERFORMANCE.md); the loop is the reference", n)
    failed = trial(models, x)
    if failed is not None:
        return CohortChoice(False, f"the batched path failed: {failed}", n)
    loop_s, batched_s = time_paths(models, x)
    faster = batched_s < _MARGIN * loop_s
    return CohortChoice(faster, "timed: batched faster" if faster else "timed: loop not slower",
                        n, round(1e3 * loop_s, 3), round(1e3 * batched_s, 3))
