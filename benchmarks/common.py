"""What every benchmark shares: timing side by side, the result row, the table, test data.

Every figure of the suite is a ratio of two timings taken in the same process, interleaved
(a, b, b, a, ...), each the median of ``repeats`` runs after a warm-up, so that a shared,
busy machine slows both sides alike.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class Row:
    """One line of the table: ``ours`` and ``reference`` in ``unit``; ratio = ours / reference."""

    bench: str
    case: str
    ours: float
    reference: float
    unit: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else float("nan")


# The clock every timing reads. "wall" (perf_counter) is what a user waits for. "thread"
# (this thread's CPU time) is for a shared, busy CPU with torch.set_num_threads(1): it
# counts only the work done, not the waits for a core, so ratios stay steady when other
# processes take the cores (on this project's 2 busy cores one AT step's wall time varied
# 2.5-8 s at 2 threads; its thread time at 1 thread varied 0.22-0.25 s).
_CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
_clock = time.perf_counter


def use_clock(name: str) -> None:
    """Time with the "wall" or the "thread" clock (the latter needs 1 torch thread)."""
    global _clock
    if name == "thread" and torch.get_num_threads() != 1:
        raise ValueError("the thread clock measures one thread: use torch.set_num_threads(1)")
    _clock = _CLOCKS[name]


def clock_name() -> str:
    return next(k for k, v in _CLOCKS.items() if v is _clock)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    tick = _clock()
    fn()
    sync(device)
    return _clock() - tick


def side_by_side(fns: dict[str, Callable[[], object]], device: torch.device,
                 repeats: int) -> dict[str, float]:
    """Median seconds of each function: one warm-up each, then ``repeats`` rounds in an order
    that alternates forwards and backwards, so drift of the machine hits all alike."""
    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(fns[name], device))
    return {k: statistics.median(v) for k, v in times.items()}


def autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def matmul_rate(device: torch.device, n: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """FLOP/s of an ``n x n`` by ``n x n`` matrix product: the machine's practical peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = side_by_side({"mm": lambda: a @ b}, device, repeats)["mm"]
    return 2 * n**3 / seconds


def model_input(name: str) -> tuple[int, int]:
    """(channels, side) of the data a benchmark model is meant for."""
    return (1, 28) if name in ("tinycnn", "madrycnn", "smallcnn") else (3, 32)


def build(name: str, device: torch.device, channels_last: bool, seed: int = 0) -> nn.Module:
    from mutualat.models import create_model

    c, side = model_input(name)
    torch.manual_seed(seed)
    model = create_model(name, in_channels=c, input_size=side).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def random_batch(name: str, batch: int, device: torch.device, channels_last: bool,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform [0,1] images and random labels of the model's data shape (timing only)."""
    c, side = model_input(name)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, c, side, side, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def print_table(rows: list[Row], header: str = "") -> None:
    if header:
        print(header)
    print(f"| {'benchmark':<10} | {'case':<60} | {'ours':>10} | {'reference':>10} | "
          f"{'unit':<8} | {'ratio':>6} | note")
    print(f"|{'-' * 12}|{'-' * 62}|{'-' * 12}|{'-' * 12}|{'-' * 10}|{'-' * 8}|------")
    for r in rows:
        print(f"| {r.bench:<10} | {r.case:<60} | {r.ours:>10.4g} | {r.reference:>10.4g} | "
              f"{r.unit:<8} | {r.ratio:>6.3f} | {r.note}", flush=True)


def environment(device: torch.device) -> str:
    import datetime
    import platform

    what = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                what = next(line.split(":", 1)[1].strip() for line in f
                            if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return (f"{datetime.datetime.now().isoformat(timespec='minutes')}, device {device} ({what}), "
            f"torch {torch.__version__}, threads {torch.get_num_threads()}, {clock_name()} clock")
