"""The processes of a run: one, or a torch.distributed process group launched by torchrun.

``torchrun --nproc-per-node K -m mutualat train ...`` (or ``mutualat train --nproc K``, which
runs torchrun for you) starts K copies of one command. :func:`setup` finds them through
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins them in one process group: NCCL on GPUs (process r uses
``cuda:LOCAL_RANK``), gloo on CPUs. How the members and the batches are split over the
processes is the cohort's placement (:mod:`mutualat.train.placement`); this module only
knows processes: who is rank 0, how an object reaches the others, and how a failed or
timed-out collective becomes a sentence.

Random numbers: every process has its own torch RNG stream (rank 0 the single-process one,
rank r > 0 seeded from ``(seed, r)``, :func:`rank_seed`).

Files: only rank 0 touches the run folder. The others get the config and their part of the
checkpoint from rank 0 over the process group, so the folder need not be on a shared
filesystem (the data must be readable on every node).

Failures: every collective runs under the process group's timeout
(``distributed.timeout_s``). A collective that fails or times out (another process died or
hangs) raises :class:`TrainingError` naming the process and the operation instead of
hanging; torchrun stops the other processes as soon as one exits.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from mutualat.config import DistributedConfig, RunConfig
from mutualat.errors import ConfigError, MutualatError, TrainingError

# Substrings of the RuntimeErrors gloo raises for a dead or silent peer (NCCL raises
# torch.distributed.DistError); anything else is a bug and keeps its traceback.
_COLLECTIVE_FAILURE = ("gloo", "Gloo", "NCCL", "nccl", "Connection", "Timed out", "timed out",
                       "ProcessGroup", "c10d")


def launched_processes() -> int:
    """How many processes torchrun started for this run (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The torch seed of process ``rank``: rank 0 keeps ``seed`` (the single-process stream);
    the others' are decorrelated by SeedSequence. ``step`` > 0 reseeds a process the
    checkpoint has no RNG state for (a run resumed with more processes)."""
    if rank == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


class Processes:
    """One process: rank 0 of 1, and every exchange the identity."""

    rank = 0
    world = 1
    is_main = True
    timeout_s: float | None = None

    def configure(self, cfg: RunConfig) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {}

    def device(self, device: torch.device) -> torch.device:
        return device

    @property
    def comm_device(self) -> torch.device:
        return torch.device("cpu")

    def seed(self, seed: int, step: int = 0) -> None:
        pass

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run by rank 0; its result (or its error) reaches every process."""
        return fn()

    def scatter_from_main(self, load: Callable[[], Any], part_for: Callable[[Any, int], Any]) -> Any:
        """``load()`` run by rank 0; process r receives ``part_for(loaded, r)`` (None stays None)."""
        return load()

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every process's ``obj`` on rank 0, in rank order (None on the others)."""
        return [obj]

    def all_gather(self, obj: Any, what: str) -> list[Any]:
        return [obj]

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        yield

    def failed(self) -> None:
        pass


class ProcessGroup(Processes):
    """One of several processes in a torch.distributed process group."""

    def __init__(self, out: Path, owns_group: bool, timeout_s: float | None = None) -> None:
        self.out = Path(out)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        self.owns_group = owns_group
        self.group = None  # None = the default group
        self.backend = dist.get_backend()
        self.timeout_s = timeout_s

    def configure(self, cfg: RunConfig) -> None:
        """A group with the config's backend and timeout (the default group is made before a
        resumed run's saved config is known)."""
        if not self.owns_group:  # the caller made the group: use it as it is
            return
        d = cfg.distributed
        key = (_backend(d.backend, cfg.device), float(d.timeout_s))
        if key != _groups["default"]:
            if key not in _groups:
                with self.guard("creating the process group"):
                    _groups[key] = dist.new_group(backend=key[0], timeout=timedelta(seconds=key[1]))
            self.group, self.backend = _groups[key], key[0]
        self.timeout_s = key[1]

    def describe(self) -> dict[str, Any]:
        return {"processes": self.world, "backend": self.backend}

    @property
    def comm_device(self) -> torch.device:
        """Where tensors for collectives live: NCCL needs the GPU, gloo takes CPU tensors."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def device(self, device: torch.device) -> torch.device:
        if device.type != "cuda":
            return device
        if device.index is not None:
            raise ConfigError(
                f"device {device} names one GPU, but {self.world} processes run: use "
                "device=cuda (or auto); process r takes cuda:LOCAL_RANK"
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def seed(self, seed: int, step: int = 0) -> None:
        """Give this process its own RNG stream; rank 0 keeps the single-process one."""
        if self.rank > 0 or step > 0:
            torch.manual_seed(rank_seed(seed, self.rank, step))

    def from_main(self, fn: Callable[[], Any]) -> Any:
        box = [_attempt(fn) if self.is_main else None]
        with self.guard("receiving the run configuration from rank 0"):
            dist.broadcast_object_list(box, src=0, group=self.group)
        return _unbox(box[0])

    def scatter_from_main(self, load: Callable[[], Any], part_for: Callable[[Any, int], Any]) -> Any:
        parts = None
        if self.is_main:
            loaded = _attempt(load)
            parts = ([loaded] * self.world if loaded[0] == "error" or loaded[1] is None
                     else [("ok", part_for(loaded[1], r)) for r in range(self.world)])
        box: list[Any] = [None]
        with self.guard("receiving the checkpoint from rank 0"):
            dist.scatter_object_list(box, parts, src=0, group=self.group)
        return _unbox(box[0])

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        out = [None] * self.world if self.is_main else None
        with self.guard("gathering the run state on rank 0"):
            dist.gather_object(_to_cpu(obj), out, dst=0, group=self.group)
        return out

    def all_gather(self, obj: Any, what: str) -> list[Any]:
        parts: list[Any] = [None] * self.world
        with self.guard(what):
            dist.all_gather_object(parts, obj, group=self.group)
        return parts

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a failed or timed-out collective into a TrainingError that says what happened."""
        try:
            yield
        except MutualatError:
            raise
        except RuntimeError as exc:
            if not (isinstance(exc, dist.DistError) or any(s in str(exc) for s in _COLLECTIVE_FAILURE)):
                raise
            self.failed()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            timeout = f"{self.timeout_s:g} s" if self.timeout_s else "the process group's timeout"
            raise TrainingError(
                f"process {self.rank} of {self.world} stopped: {what} failed ({first[:300]}). "
                f"Another process has probably died or stopped responding: its own output says "
                f"why. A collective waits at most distributed.timeout_s ({timeout}). Resume "
                f"from the last checkpoint in {self.out} with --resume."
            ) from exc

    def failed(self) -> None:
        global _failed
        _failed = True


# --- the process group itself ----------------------------------------------------------

_failed = False  # set once a collective failed: the exit handler then skips the teardown
# (backend, timeout) -> the groups setup() and configure() made; "default": the key of the
# default group.
_groups: dict[Any, Any] = {}


def setup(cfg: RunConfig | None, out: Path) -> Processes:
    """This process's place in the run: :class:`Processes` (alone), or a member of the
    process group, which is made here (from torchrun's environment) unless the caller already
    made one."""
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(out, owns_group=False)
    if launched_processes() <= 1:
        return Processes()
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run in one process")
    d = cfg.distributed if cfg is not None else DistributedConfig()
    backend = _backend(d.backend, cfg.device if cfg is not None else "auto")
    if backend == "nccl":  # before the first collective: NCCL binds a process to its GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=d.timeout_s))
    _groups["default"] = (backend, float(d.timeout_s))
    atexit.register(_teardown)
    return ProcessGroup(out, owns_group=True, timeout_s=d.timeout_s)


def _backend(name: str, device: str) -> str:
    if name != "auto":
        return name
    on_gpu = torch.cuda.is_available() and device.split(":")[0] in ("auto", "cuda")
    return "nccl" if on_gpu else "gloo"


def _teardown() -> None:
    # After a failure the peers may be gone: tearing down could wait on them, so skip it.
    if not _failed and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        release_groups()


def release_groups() -> None:
    """Free the process-group objects while the interpreter is whole: one still referenced
    (here, or from a reference cycle) is otherwise freed during interpreter shutdown, when
    its backend's worker threads can no longer take the GIL, and the process aborts (SIGABRT)
    after a run that finished. Call after ``dist.destroy_process_group()``."""
    _groups.clear()
    gc.collect()


def _attempt(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as exc:  # sent to the other processes, re-raised on rank 0 by _unbox
        return "error", exc


def _unbox(box: tuple[str, Any]) -> Any:
    status, value = box
    if status == "error":
        if isinstance(value, MutualatError):
            raise value
        raise TrainingError(f"rank 0 failed: {type(value).__name__}: {value}") from value
    return value


def _to_cpu(tree: Any) -> Any:
    """A copy of nested containers with every tensor on the CPU (pickled between processes,
    a CUDA tensor would be unpickled onto the sender's GPU)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_cpu(v) for v in tree)
    return tree


def launch(nproc: int, argv: Sequence[str]) -> int:
    """``mutualat <argv>`` in ``nproc`` processes on this machine, as ``torchrun --standalone
    --nproc-per-node nproc -m mutualat <argv>`` does (a free port, torchrun's failure
    handling: when one process exits with an error the others are stopped)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "mutualat", *argv]
    )
    try:
        run(args)
    except ChildFailedError as exc:
        failures = "; ".join(
            f"rank {rank} exited with code {f.exitcode}" for rank, f in sorted(exc.failures.items())
        )
        raise TrainingError(
            f"distributed training stopped: {failures} (the output above says why); torchrun "
            "stopped the other processes"
        ) from None
    return 0
