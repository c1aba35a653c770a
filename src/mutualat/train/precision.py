"""How a training step is computed: bf16 autocast and channels_last, chosen once per run.

``RunConfig.amp`` ("auto", "bf16", "off") and ``RunConfig.channels_last`` ("auto", "on",
"off") force a choice or leave it to this module:

- On the CPU, "auto" is decided by a **trial**: a few timed training steps of every
  candidate (fp32 or bf16 autocast, times contiguous or channels_last memory, as far as the
  config leaves them open) on the run's real shapes (the method's loss, its attacks included,
  and the backward pass, on freshly built copies of the members and a batch of random pixels),
  keeping the fastest. Whether bf16 pays depends on the processor: with AMX or AVX-512 BF16
  it ran a small CNN's PGD-10 step 2-3x faster than fp32; without them bf16 is emulated and
  several times slower, so the trial keeps fp32 by itself. Candidates clearly slower are
  dropped early (after the warm-up step, then after one timed step), so an emulated bf16
  costs one step, not four. Where the processor says it has no bf16 instructions (x86
  Linux: ``/proc/cpuinfo`` lists neither ``avx512_bf16`` nor ``amx_bf16``) bf16 is not even
  tried: its one step cost up to two minutes for a MAT pair of small CNNs on such a CPU
  (docs/PERFORMANCE.md), and the log says why it was left out.
- On CUDA "auto" means bf16 and channels_last (tensor cores want both); on other devices,
  and for ``deterministic`` runs (a timing must not decide what a run computes), fp32 and
  the contiguous layout.
- A resumed run keeps the choice its checkpoint records, so it continues exactly; a
  checkpoint written before this module existed used the CUDA rule on every device.

The trial runs under :func:`torch.random.fork_rng` on copies, so the run's random stream,
weights and batch-norm statistics are untouched; the choice and every timing are recorded
in ``metrics.jsonl`` (event ``speed``) and in the checkpoint.

Mixed precision is confined to the training step's forward and backward passes: weights and
optimizer state stay fp32 (autocast casts on the fly), the adversarial perturbation, its
step and its projection are fp32 tensors (``x + delta`` is fp32; only the model's layers run
in bf16), and every loss casts the logits to fp32 before reducing (:mod:`mutualat.losses`).
Validation, the final test and ``mutualat eval`` run in fp32 (a lower-precision gradient
can weaken an attack and flatter a model).
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

#: After the warm-up step, candidates slower than this multiple of the fastest are dropped.
_DROP_AFTER_WARMUP = 3.0
#: After the first timed step, candidates slower than this multiple of the fastest are dropped.
_DROP_ABOVE = 1.25
#: Timed steps per surviving candidate (the first included), after one warm-up step.
_REPEATS = 3
#: A candidate other than plain fp32 is chosen only if it is faster than this fraction of
#: fp32's time: timings on a shared machine move by a few percent, and fp32 in the
#: contiguous layout is the reference computation.
_MARGIN = 0.97


@dataclass(frozen=True)
class Precision:
    """One way to compute a training step."""

    amp: bool = False  # bf16 autocast around the step's forward and backward
    channels_last: bool = False  # models and batches in the channels_last memory format

    @property
    def label(self) -> str:
        return ("bf16" if self.amp else "fp32") + ("+channels_last" if self.channels_last else "")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass
class PrecisionChoice:
    chosen: Precision
    how: str  # "config", "device rule", "trial", "checkpoint", "no bf16 instructions"
    seconds: dict[str, float] = field(default_factory=dict)  # label -> median s per step
    note: str = ""  # why a candidate was not tried, or why the forced one is slow here

    def record(self) -> dict:
        """What the run's log says about it."""
        out: dict = {"amp": "bf16" if self.chosen.amp else "off",
                     "channels_last": self.chosen.channels_last, "precision_how": self.how}
        if self.seconds:
            out["precision_trial_s"] = {k: round(v, 5) for k, v in self.seconds.items()}
        if self.note:
            out["precision_note"] = self.note
        return out

    def state(self) -> dict:
        """What the checkpoint keeps, so that a resumed run computes as before."""
        return asdict(self.chosen)


def candidates(amp: str, channels_last: str) -> list[Precision]:
    """Every combination the config leaves open ("auto"), plain fp32 first."""
    amps = [False, True] if amp == "auto" else [amp == "bf16"]
    layouts = [False, True] if channels_last == "auto" else [channels_last == "on"]
    return [Precision(a, c) for a in amps for c in layouts]


#: The x86 instructions that compute bf16 natively; without them PyTorch emulates it.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has bf16 instructions: True or False where ``/proc/cpuinfo`` lists
    x86 flags, None where it cannot say (another OS or architecture: the trial decides)."""
    try:
        with open(cpuinfo) as f:
            line = next((ln for ln in f if ln.startswith("flags")), None)
    except OSError:
        return None
    if line is None:
        return None
    flags = set(line.split(":", 1)[1].split())
    return any(flag in flags for flag in BF16_FLAGS)


def device_rule(amp: str, channels_last: str, device: torch.device) -> Precision:
    """"auto" without a trial: bf16 and channels_last on CUDA, neither elsewhere (the rule of
    every run before the CPU trial existed; checkpoints without a recorded choice used it)."""
    cuda = device.type == "cuda"
    return Precision(amp=amp == "bf16" or (amp == "auto" and cuda),
                     channels_last=channels_last == "on" or (channels_last == "auto" and cuda))


def choose_precision(amp: str, channels_last: str, device: torch.device,
                     make_step: Callable[[Precision], Callable[[], None]],
                     saved: dict | None = None, deterministic: bool = False) -> PrecisionChoice:
    """The run's :class:`Precision`: from the checkpoint (``saved``), the config, the device
    rule, or a trial of ``make_step(candidate)()`` (one training step) on the CPU.

    ``deterministic`` runs never trial: a choice that depends on how busy the machine is
    would make the same config compute differently from one run to the next.
    """
    choice = _choose(amp, channels_last, device, make_step, saved, deterministic)
    slow = _emulated(choice.chosen, device, "its checkpoint" if saved is not None else "amp")
    choice.note = "; ".join(note for note in (choice.note, slow) if note)
    return choice


def _choose(amp: str, channels_last: str, device: torch.device,
            make_step: Callable[[Precision], Callable[[], None]], saved: dict | None,
            deterministic: bool) -> PrecisionChoice:
    """:func:`choose_precision` before the emulation warning."""
    if saved is not None:
        return PrecisionChoice(Precision(**saved), "checkpoint")
    options = candidates(amp, channels_last)
    if len(options) == 1:
        return PrecisionChoice(options[0], "config")
    if device.type != "cpu" or deterministic:
        return PrecisionChoice(device_rule(amp, channels_last, device), "device rule")
    note = ""
    if amp == "auto" and cpu_bf16() is False:
        options = [c for c in options if not c.amp]
        note = f"bf16 not tried: the processor has none of {', '.join(BF16_FLAGS)}"
        if len(options) == 1:
            return PrecisionChoice(options[0], "no bf16 instructions", note=note)
    seconds = trial({c: make_step(c) for c in options}, device)
    return PrecisionChoice(pick(seconds), "trial", {c.label: s for c, s in seconds.items()}, note)


def _emulated(chosen: Precision, device: torch.device, why: str) -> str:
    """A warning, also returned for the run's log, where bf16 meets a CPU without bf16
    instructions: only a forced one can (the config's ``amp``, whatever decides the layout,
    or the checkpoint a run resumes), since "auto" leaves bf16 out on such a CPU."""
    if not (chosen.amp and device.type == "cpu" and cpu_bf16() is False):
        return ""
    note = (f"bf16 autocast ({why}) on a processor with none of {', '.join(BF16_FLAGS)}: "
            "PyTorch emulates bf16 there, several times slower than fp32 (docs/PERFORMANCE.md)")
    warnings.warn(note, stacklevel=4)
    return note


def pick(seconds: dict[Precision, float]) -> Precision:
    """The fastest candidate; plain fp32 (the first) unless another beats it by the margin."""
    reference = next(iter(seconds))
    fastest = min(seconds, key=seconds.get)
    if fastest != reference and seconds[fastest] < _MARGIN * seconds[reference]:
        return fastest
    return reference


def time_step(step: Callable[[], None], candidate: Precision) -> float:
    """Seconds one call of ``step`` (computing as ``candidate``) takes: the wall clock, the
    trial's only timer (tests patch it to make one candidate slower)."""
    tick = time.perf_counter()
    step()
    return time.perf_counter() - tick


def trial(steps: dict[Precision, Callable[[], None]], device: torch.device) -> dict[Precision, float]:
    """Median seconds per step of each candidate that survives the first round.

    One warm-up step each (allocations, one-off kernel choices); the candidates within
    :data:`_DROP_AFTER_WARMUP` of the fastest warm-up get a timed round, and those within
    :data:`_DROP_ABOVE` of the fastest of that round ``_REPEATS - 1`` more rounds in
    alternating order. A dropped candidate keeps the timing it had (its warm-up's, if it was
    dropped after the warm-up). Runs under a forked RNG.
    """
    with _private_rng(device):
        warm = {c: time_step(step, c) for c, step in steps.items()}
        # An emulated bf16 is many times slower even counting one-off costs: no need to time
        # it again (the warm-up's timing stands for it).
        alive = [c for c in steps if warm[c] <= _DROP_AFTER_WARMUP * min(warm.values())]
        times = {c: [warm[c]] for c in steps}
        for c in alive:
            times[c] = [time_step(steps[c], c)]
        best = min(times[c][0] for c in alive)
        alive = [c for c in alive if times[c][0] <= _DROP_ABOVE * best]
        for r in range(_REPEATS - 1):
            for c in alive if r % 2 else alive[::-1]:
                times[c].append(time_step(steps[c], c))
    return {c: statistics.median(t) for c, t in times.items()}


@contextlib.contextmanager
def _private_rng(device: torch.device) -> Iterator[None]:
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        yield


@contextlib.contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """Every CUDA convolution and matrix product in IEEE fp32 while inside.

    torch runs fp32 convolutions on CUDA in TF32 by default (a 10-bit mantissa): an attack's
    gradient is then computed at about bf16's precision, and an evaluation that says "fp32"
    would not be. The previous settings come back on exit; other devices are untouched.
    """
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


class AutocastModel(nn.Module):
    """``model`` run under bf16 autocast, its logits returned in fp32: what ``mutualat eval
    --amp bf16`` attacks. The input (the attack's ``x + delta``) is never cast."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x).float()
