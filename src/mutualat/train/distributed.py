"""Training on several processes: data-parallel or cohort-parallel, launched by torchrun.

``torchrun --nproc-per-node K -m mutualat train ...`` (or ``mutualat train --nproc K``, which
runs torchrun for you) starts K copies of one command. :func:`setup` finds them through
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins them in one process group: NCCL on GPUs (process r uses
``cuda:LOCAL_RANK``), gloo on CPUs. ``RunConfig.distributed.mode`` splits the work:

``data`` (every method)
    Every process holds every member and trains on its contiguous shard of each batch
    (``batch_size / K`` rows; ``batch_size`` must be divisible by K, so the global batch is
    the single-process batch). DistributedDataParallel averages the gradients over the
    processes; every method's loss is a batch mean, so the averaged gradient is the
    full-batch gradient. Batch-norm: by default each process normalizes its shard with the
    shard's statistics (as DDP does), and after every step the running averages are
    averaged over the processes, so that all processes hold the same model (attacks, which
    run in eval mode, use the same statistics everywhere, and rank 0's state is the whole
    state). ``distributed.sync_bn: true`` uses SyncBatchNorm instead (statistics of the
    global batch, as one process computes them; CUDA only). A model without batch-norm or
    dropout (``madrycnn``) trains as in one process up to float rounding (which l-inf PGD's
    sign steps can amplify into a few flipped pixels: still float noise, just larger).

``cohort`` (methods whose members meet only through detached clean soft labels: MAT, MAT-MP)
    Member i lives on process ``i mod K`` (so N members use at most N processes) and sees
    the whole batch. Every step the processes all-gather the clean logits their members
    computed (``B x classes`` floats per member), so each member distils from its peers'
    targets without holding their weights. Each member runs exactly the forwards it runs in
    one process, batch-norm included.

Random numbers: every process has its own torch RNG stream (rank 0 the single-process one,
rank r > 0 seeded from ``(seed, r)``), so random starts of the training attacks are drawn
differently from a single-process run (which draws every member's and every row's from one
stream, in another order). A step that draws none (``attack.random_start: false``, no
dropout) matches the single-process step up to float rounding; the tests check both modes
that way. The checkpoint keeps every process's RNG state: a run resumed with the same K
continues exactly as the uninterrupted one.

Files: only rank 0 touches the run folder (config, metrics, model files, checkpoint,
results). The other processes get the config and their part of the checkpoint from rank 0
over the process group, so the run folder need not be on a shared filesystem (the data must
be readable on every node). In cohort mode rank 0 gathers the other processes' members
(weights, optimizer and scheduler states, RNG states) for every checkpoint and model file;
the checkpoint has the single-process layout plus ``rng_ranks``, so any mode or process
count can resume it. Validation and the final test are split too: data mode shards the
images over the processes, cohort mode evaluates each member on its own process.

Failures: every collective runs under the process group's timeout
(``distributed.timeout_s``). A collective that fails or times out (another process died or
hangs) raises :class:`TrainingError` naming the process and the operation instead of
hanging; torchrun stops the other processes as soon as one exits.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mutualat.config import DistributedConfig, RunConfig
from mutualat.errors import ConfigError, MutualatError, TrainingError

# Substrings of the RuntimeErrors gloo raises for a dead or silent peer (NCCL raises
# torch.distributed.DistError); anything else is a bug and keeps its traceback.
_COLLECTIVE_FAILURE = ("gloo", "Gloo", "NCCL", "nccl", "Connection", "Timed out", "timed out",
                       "ProcessGroup", "c10d")
_failed = False  # set once a collective failed: the exit handler then skips the teardown
# (backend, timeout) -> the groups setup() and Distributed.configure() made; "default": the
# key of the default group.
_groups: dict[Any, Any] = {}


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


class Solo:
    """One process: every operation is the identity, so the trainer reads the same either way."""

    rank = 0
    world = 1
    is_main = True
    mode: str | None = None

    def configure(self, cfg: RunConfig) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {}

    def device(self, device: torch.device) -> torch.device:
        return device

    def check(self, cfg: RunConfig, method: Any) -> None:
        pass

    def seed(self, seed: int, step: int = 0) -> None:
        pass

    def owns(self, index: int) -> bool:
        """Whether this process holds member ``index`` (all of them, except in cohort mode)."""
        return True

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run by rank 0; its result (or its error) reaches every process."""
        return fn()

    def state_from_main(self, load: Callable[[], dict]) -> dict:
        """The checkpoint rank 0 loads, each process given its own part of it."""
        return load()

    def gather_state(self, part: dict) -> list[dict] | None:
        """Every process's part of the run state, on rank 0 (None on the others)."""
        return [part]

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        return [obj]

    def prepare(self, model: nn.Module, trainable: bool) -> nn.Module:
        """The module the method calls for this member (data mode: its DDP wrapper)."""
        return model

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def guard(self, what: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def after_step(self, models: Sequence[nn.Module]) -> None:
        pass

    def reduce_step(self, loss: float, values: dict[str, float],
                    lrs: dict[int, float]) -> tuple[float, dict[str, float], float]:
        """The step's loss and metrics over all processes, and the first trainable member's lr."""
        return loss, values, lrs[min(lrs)] if lrs else 0.0

    def eval_range(self, n: int) -> tuple[int, int]:
        """The rows of an evaluation split this process evaluates."""
        return 0, n

    def combine_accuracies(self, local: dict[str, dict[str, float]],
                           count: int) -> dict[str, dict[str, float]]:
        return local

    def failed(self) -> None:
        pass


class Distributed(Solo):
    """One of several processes in a torch.distributed process group."""

    def __init__(self, out: Path, owns_group: bool) -> None:
        self.out = Path(out)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        self.owns_group = owns_group
        self.group = None  # None = the default group
        self.backend = dist.get_backend()
        self.timeout_s: float | None = None
        self.mode = "data"
        self.sync_bn = False

    # --- set-up -----------------------------------------------------------------------

    def configure(self, cfg: RunConfig) -> None:
        """Take the mode from the config, and a group with its backend and timeout (the
        default group is made before a resumed run's saved config is known)."""
        d = cfg.distributed
        self.mode, self.sync_bn = d.mode, d.sync_bn
        if not self.owns_group:  # the caller made the group: use it as it is
            return
        key = (_backend(d.backend, cfg.device), float(d.timeout_s))
        if key != _groups["default"]:
            if key not in _groups:
                with self.guard("creating the process group"):
                    _groups[key] = dist.new_group(backend=key[0], timeout=timedelta(seconds=key[1]))
            self.group, self.backend = _groups[key], key[0]
        self.timeout_s = key[1]

    def describe(self) -> dict[str, Any]:
        return {"processes": self.world, "distributed_mode": self.mode, "backend": self.backend}

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

    def check(self, cfg: RunConfig, method: Any) -> None:
        n = len(cfg.models)
        if self.mode == "data":
            if cfg.data.batch_size % self.world:
                raise ConfigError(
                    f"data.batch_size={cfg.data.batch_size} is not divisible by the {self.world} "
                    "processes: data-parallel training splits every batch into equal shards"
                )
            if self.sync_bn and not torch.cuda.is_available():
                raise ConfigError("distributed.sync_bn needs CUDA (SyncBatchNorm runs on GPUs only)")
            if getattr(cfg, "cohort_batch", "loop") == "batched":
                # The batched cohort calls the members through torch.func, around the DDP
                # wrapper: DDP would never all-reduce those gradients.
                raise ConfigError(
                    "cohort_batch=batched bypasses DistributedDataParallel's forward, so the "
                    "gradients would not be averaged over the processes: use cohort_batch=loop "
                    "with distributed.mode=data (cohort mode may batch a process's own members)"
                )
            return
        if not method.cohort_parallel:
            raise ConfigError(
                f"distributed.mode=cohort splits the members of methods that share only clean "
                f"soft labels (mat, mat-mp); {method.registered_name!r} does not: use "
                "distributed.mode=data"
            )
        if self.world > n:
            raise ConfigError(
                f"distributed.mode=cohort runs whole members on each process: {n} members can "
                f"use at most {n} processes, {self.world} were started (use distributed.mode=data "
                "to use more)"
            )

    def seed(self, seed: int, step: int = 0) -> None:
        """Give this process its own RNG stream (see the module docstring); rank 0 keeps the
        stream a single process has."""
        if self.rank > 0 or step > 0:
            torch.manual_seed(rank_seed(seed, self.rank, step))

    def owner(self, index: int) -> int:
        """Cohort mode: the process that holds member ``index`` (round robin)."""
        return index % self.world

    def owns(self, index: int) -> bool:
        return self.mode != "cohort" or self.owner(index) == self.rank

    # --- rank 0 <-> the others ----------------------------------------------------------

    def from_main(self, fn: Callable[[], Any]) -> Any:
        box = [_attempt(fn) if self.is_main else None]
        with self.guard("receiving the run configuration from rank 0"):
            dist.broadcast_object_list(box, src=0, group=self.group)
        return _unbox(box[0])

    def state_from_main(self, load: Callable[[], dict]) -> dict:
        parts = None
        if self.is_main:
            loaded = _attempt(load)
            parts = ([loaded] * self.world if loaded[0] == "error" or loaded[1] is None
                     else [("ok", self._part_for(loaded[1], r)) for r in range(self.world)])
        box: list[Any] = [None]
        with self.guard("receiving the checkpoint from rank 0"):
            dist.scatter_object_list(box, parts, src=0, group=self.group)
        return _unbox(box[0])

    def _part_for(self, state: dict, rank: int) -> dict:
        """What process ``rank`` needs of a checkpoint: its members, its RNG state."""
        part = dict(state)
        if self.mode == "cohort":
            for key in ("models", "optimizers", "schedulers"):
                part[key] = [v if self.owner(i) == rank else None for i, v in enumerate(state[key])]
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.world:
            part["rng"] = ranks[rank]
        elif rank > 0:
            part["rng"] = None  # written by a run with other processes: reseed (not bit-exact)
        return part

    def gather_state(self, part: dict) -> list[dict] | None:
        if self.mode == "data" and not self.is_main:  # the members are rank 0's, too
            part = {**part, "members": {}}
        return self.gather_to_main(_to_cpu(part))

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        out = [None] * self.world if self.is_main else None
        with self.guard("gathering the run state on rank 0"):
            dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    # --- the step -----------------------------------------------------------------------

    def prepare(self, model: nn.Module, trainable: bool) -> nn.Module:
        if self.mode != "data" or not trainable:
            return model
        if self.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=self.group)
        device = next(model.parameters()).device
        from torch.nn.parallel import DistributedDataParallel

        # Buffers are not broadcast from rank 0 before every forward (the attacks' forwards
        # would each pay a collective): after_step averages the batch-norm statistics instead.
        no_buffer_sync = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})  # before torch 2.13
        with self.guard("wrapping a model in DistributedDataParallel"):
            return DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                process_group=self.group, **no_buffer_sync,
            )

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode != "data":
            return x, y
        b = len(y) // self.world
        rows = slice(self.rank * b, (self.rank + 1) * b)
        return x[rows], y[rows]

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

    def after_step(self, models: Sequence[nn.Module]) -> None:
        if self.mode != "data" or self.sync_bn:
            return
        stats = [buf for model in models for module in model.modules()
                 if isinstance(module, nn.modules.batchnorm._BatchNorm)
                 for buf in (module.running_mean, module.running_var) if buf is not None]
        if not stats:
            return
        flat = torch.cat([s.detach().reshape(-1).float() for s in stats]).to(self.comm_device)
        with self.guard("averaging the batch-norm statistics"):
            dist.all_reduce(flat, group=self.group)
        flat /= self.world
        offset = 0
        with torch.no_grad():
            for s in stats:
                s.copy_(flat[offset : offset + s.numel()].view_as(s))
                offset += s.numel()

    def exchange_targets(self, local: dict[int, torch.Tensor], batch_size: int, *,
                         members: Sequence[int], num_classes: int) -> dict[int, torch.Tensor]:
        """Cohort mode: every process's clean soft labels ``{member: (B, K)}``, from this
        process's ``local`` ones, by one all-gather (each process fills one slot per member
        it holds; float32 on the wire, exact for float32 and bfloat16 logits)."""
        held = [[m for m in members if self.owner(m) == r] for r in range(self.world)]
        slots = max(len(h) for h in held)
        if slots == 0:
            return local
        send = torch.zeros(slots, batch_size, num_classes, device=self.comm_device)
        for j, m in enumerate(held[self.rank]):
            send[j] = local[m].detach().float()
        received = [torch.empty_like(send) for _ in range(self.world)]
        with self.guard("the all-gather of the peers' soft labels"):
            dist.all_gather(received, send, group=self.group)
        device = next(iter(local.values())).device if local else self.comm_device
        out = dict(local)
        for r in range(self.world):
            if r != self.rank:
                for j, m in enumerate(held[r]):
                    out[m] = received[r][j].to(device)
        return out

    def reduce_step(self, loss: float, values: dict[str, float],
                    lrs: dict[int, float]) -> tuple[float, dict[str, float], float]:
        if self.mode == "data":  # the same keys everywhere: one all-reduce of the means
            keys = list(values)
            flat = torch.tensor([loss] + [values[k] for k in keys], dtype=torch.float64,
                                device=self.comm_device)
            with self.guard("the all-reduce of the step's loss"):
                dist.all_reduce(flat, group=self.group)
            flat = (flat / self.world).tolist()
            lr = lrs[min(lrs)] if lrs else 0.0
            return flat[0], dict(zip(keys, flat[1:])), lr
        parts: list[Any] = [None] * self.world
        with self.guard("the all-gather of the step's losses"):
            dist.all_gather_object(parts, (loss, values, lrs), group=self.group)
        merged: dict[str, float] = {}
        all_lrs: dict[int, float] = {}
        for _, v, l in parts:
            merged.update(v)
            all_lrs.update(l)
        return sum(p[0] for p in parts), merged, all_lrs[min(all_lrs)] if all_lrs else 0.0

    # --- evaluation ---------------------------------------------------------------------

    def eval_range(self, n: int) -> tuple[int, int]:
        if self.mode != "data":
            return 0, n
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def combine_accuracies(self, local: dict[str, dict[str, float]],
                           count: int) -> dict[str, dict[str, float]]:
        if self.mode != "data":  # each member evaluated on its own process, on every image
            parts: list[Any] = [None] * self.world
            with self.guard("gathering the evaluation results"):
                dist.all_gather_object(parts, local, group=self.group)
            return {role: acc for part in parts for role, acc in part.items()}
        # Data mode: the same members everywhere, each process a slice of the images;
        # accuracies are turned back into counts (exact: k/n in float32 for n < 2^24).
        keys = [(role, name) for role, acc in local.items() for name in acc]
        counts = [round(local[r][k] * count) if count else 0 for r, k in keys]
        flat = torch.tensor([count] + counts, dtype=torch.float64, device=self.comm_device)
        with self.guard("the all-reduce of the evaluation results"):
            dist.all_reduce(flat, group=self.group)
        total, *correct = flat.tolist()
        out: dict[str, dict[str, float]] = {role: {} for role in local}
        for (role, name), k in zip(keys, correct):
            out[role][name] = (torch.tensor(k, dtype=torch.float32) / total).item()
        return out

    def failed(self) -> None:
        global _failed
        _failed = True


# --- process group ---------------------------------------------------------------------


def setup(cfg: RunConfig | None, out: Path) -> Solo:
    """The process's place in the run: :class:`Solo`, or a :class:`Distributed` member of the
    process group, which is made here (from torchrun's environment) unless the caller
    already made one."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(out, owns_group=False)
    if launched_processes() <= 1:
        return Solo()
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run in one process")
    d = cfg.distributed if cfg is not None else DistributedConfig()
    backend = _backend(d.backend, cfg.device if cfg is not None else "auto")
    if backend == "nccl":  # before the first collective: NCCL binds a process to its GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=d.timeout_s))
    _groups["default"] = (backend, float(d.timeout_s))
    atexit.register(_teardown)
    member = Distributed(out, owns_group=True)
    member.timeout_s = d.timeout_s
    return member


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
