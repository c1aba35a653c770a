"""Where a cohort's members run: :class:`Local`, :class:`DataParallel`, :class:`CohortParallel`.

``RunConfig.distributed.mode`` chooses one when torchrun starts several processes
(:mod:`mutualat.train.processes`); a single process is always :class:`Local`.

``data`` (every method): :class:`DataParallel`
    Every process holds every member and trains on its contiguous shard of each batch
    (``batch_size / K`` rows; ``batch_size`` must be divisible by K, so the global batch is
    the single-process batch). DistributedDataParallel averages the gradients over the
    processes; every method's loss is a batch mean, so the averaged gradient is the
    full-batch gradient. Batch-norm: by default each process normalizes its shard with the
    shard's statistics (as DDP does), and after every step the running averages are
    averaged over the processes, so that all processes hold the same model (attacks, which
    run in eval mode, use the same statistics everywhere, and rank 0's state is the whole
    state). ``distributed.sync_bn: true`` uses SyncBatchNorm instead (statistics of the
    global batch; CUDA only). A model without batch-norm or dropout trains as in one process
    up to float rounding (which l-inf PGD's sign steps can amplify into a few flipped pixels).

``cohort`` (methods whose members meet only through detached clean soft labels: MAT, MAT-MP):
:class:`CohortParallel`
    Member i lives on process ``i mod K`` (so N members use at most N processes) and sees
    the whole batch. Every step the processes all-gather the clean logits their members
    computed (``B x classes`` floats per member), so each member distils from its peers'
    targets without holding their weights. Each member runs exactly the forwards it runs in
    one process, batch-norm included.

Random starts are drawn from each process's own stream, so a distributed run is not
bit-identical to a single-process one; a step that draws no random numbers matches it up to
float rounding. The checkpoint keeps every process's RNG state (``rng_ranks``) and has the
single-process layout, so a run resumed with the same K continues exactly, and any
placement or process count can resume it. Validation and the final test are split too: data
mode shards the images over the processes, cohort mode evaluates each member on its own
process.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from mutualat.config import RunConfig
from mutualat.errors import ConfigError
from mutualat.train.processes import Processes


class Local:
    """Every member in this process, on the whole batch: each operation is the identity."""

    mode: str | None = None

    def __init__(self, processes: Processes, num_classes: int = 0) -> None:
        self.processes = processes
        self.num_classes = num_classes

    def check(self, cfg: RunConfig, method: Any) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {}

    def owns(self, index: int) -> bool:
        """Whether this process holds member ``index``."""
        return True

    def prepare(self, model: nn.Module, trainable: bool) -> nn.Module:
        """What a loss calls for this member (the model itself here)."""
        return model

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def after_step(self, models: Sequence[nn.Module]) -> None:
        pass

    def exchange(self, targets: dict[int, torch.Tensor], indices: Sequence[int],
                 batch_size: int) -> dict[int, torch.Tensor]:
        return targets

    def reduce_step(self, loss: float, values: dict[str, float]) -> tuple[float, dict[str, float]]:
        return loss, values

    def eval_range(self, n: int) -> tuple[int, int]:
        return 0, n

    def combine_accuracies(self, local: dict[str, dict[str, float]],
                           count: int) -> dict[str, dict[str, float]]:
        return local

    def checkpoint_part(self, state: dict, rank: int) -> dict:
        """What process ``rank`` needs of a checkpoint (all of it in one process)."""
        return state

    def members_on_main(self) -> bool:
        """Whether rank 0 holds every member's weights (and so writes them without a gather)."""
        return True


class DataParallel(Local):
    mode = "data"

    def __init__(self, processes: Processes, num_classes: int = 0, sync_bn: bool = False) -> None:
        super().__init__(processes, num_classes)
        self.sync_bn = sync_bn

    def check(self, cfg: RunConfig, method: Any) -> None:
        world = self.processes.world
        if cfg.data.batch_size % world:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} is not divisible by the {world} "
                "processes: data-parallel training splits every batch into equal shards"
            )
        if self.sync_bn and not torch.cuda.is_available():
            raise ConfigError("distributed.sync_bn needs CUDA (SyncBatchNorm runs on GPUs only)")

    def describe(self) -> dict[str, Any]:
        return {"distributed_mode": self.mode}

    def prepare(self, model: nn.Module, trainable: bool) -> nn.Module:
        if not trainable:
            return model
        p = self.processes
        if self.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=p.group)
        device = next(model.parameters()).device
        from torch.nn.parallel import DistributedDataParallel

        # Buffers are not broadcast from rank 0 before every forward (the attacks' forwards
        # would each pay a collective): after_step averages the batch-norm statistics instead.
        no_buffer_sync = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})  # before torch 2.13
        with p.guard("wrapping a model in DistributedDataParallel"):
            return DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                process_group=p.group, **no_buffer_sync,
            )

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.processes
        b = len(y) // p.world
        rows = slice(p.rank * b, (p.rank + 1) * b)
        return x[rows], y[rows]

    def after_step(self, models: Sequence[nn.Module]) -> None:
        if self.sync_bn:
            return
        p = self.processes
        stats = [buf for model in models for module in model.modules()
                 if isinstance(module, nn.modules.batchnorm._BatchNorm)
                 for buf in (module.running_mean, module.running_var) if buf is not None]
        if not stats:
            return
        flat = torch.cat([s.detach().reshape(-1).float() for s in stats]).to(p.comm_device)
        with p.guard("averaging the batch-norm statistics"):
            dist.all_reduce(flat, group=p.group)
        flat /= p.world
        offset = 0
        with torch.no_grad():
            for s in stats:
                s.copy_(flat[offset : offset + s.numel()].view_as(s))
                offset += s.numel()

    def reduce_step(self, loss: float, values: dict[str, float]) -> tuple[float, dict[str, float]]:
        p = self.processes
        keys = list(values)  # the same keys everywhere: one all-reduce of the means
        flat = torch.tensor([loss] + [values[k] for k in keys], dtype=torch.float64,
                            device=p.comm_device)
        with p.guard("the all-reduce of the step's loss"):
            dist.all_reduce(flat, group=p.group)
        flat = (flat / p.world).tolist()
        return flat[0], dict(zip(keys, flat[1:]))

    def eval_range(self, n: int) -> tuple[int, int]:
        p = self.processes
        return p.rank * n // p.world, (p.rank + 1) * n // p.world

    def combine_accuracies(self, local: dict[str, dict[str, float]],
                           count: int) -> dict[str, dict[str, float]]:
        # The same members everywhere, each process a slice of the images; accuracies are
        # turned back into counts (exact: k/n in float32 for n < 2^24).
        p = self.processes
        keys = [(role, name) for role, acc in local.items() for name in acc]
        counts = [round(local[r][k] * count) if count else 0 for r, k in keys]
        flat = torch.tensor([count] + counts, dtype=torch.float64, device=p.comm_device)
        with p.guard("the all-reduce of the evaluation results"):
            dist.all_reduce(flat, group=p.group)
        total, *correct = flat.tolist()
        out: dict[str, dict[str, float]] = {role: {} for role in local}
        for (role, name), k in zip(keys, correct):
            out[role][name] = (torch.tensor(k, dtype=torch.float32) / total).item()
        return out

    def checkpoint_part(self, state: dict, rank: int) -> dict:
        return _with_rank_rng(state, rank, self.processes.world)


class CohortParallel(Local):
    mode = "cohort"

    def check(self, cfg: RunConfig, method: Any) -> None:
        n, world = len(cfg.models), self.processes.world
        if not method.cohort_parallel:
            raise ConfigError(
                f"distributed.mode=cohort splits the members of methods that share only clean "
                f"soft labels (mat, mat-mp); {method.registered_name!r} does not: use "
                "distributed.mode=data"
            )
        if world > n:
            raise ConfigError(
                f"distributed.mode=cohort runs whole members on each process: {n} members can "
                f"use at most {n} processes, {world} were started (use distributed.mode=data "
                "to use more)"
            )

    def describe(self) -> dict[str, Any]:
        return {"distributed_mode": self.mode}

    def owner(self, index: int) -> int:
        """The process that holds member ``index`` (round robin)."""
        return index % self.processes.world

    def owns(self, index: int) -> bool:
        return self.owner(index) == self.processes.rank

    def exchange(self, targets: dict[int, torch.Tensor], indices: Sequence[int],
                 batch_size: int) -> dict[int, torch.Tensor]:
        """Every process's clean soft labels ``{member: (B, K)}`` by one all-gather (each
        process fills one slot per member it holds; float32 on the wire, exact for float32
        and bfloat16 logits)."""
        p = self.processes
        held = [[m for m in indices if self.owner(m) == r] for r in range(p.world)]
        slots = max(len(h) for h in held)
        if slots == 0:
            return targets
        send = torch.zeros(slots, batch_size, self.num_classes, device=p.comm_device)
        for j, m in enumerate(held[p.rank]):
            send[j] = targets[m].detach().float()
        received = [torch.empty_like(send) for _ in range(p.world)]
        with p.guard("the all-gather of the peers' soft labels"):
            dist.all_gather(received, send, group=p.group)
        device = next(iter(targets.values())).device if targets else p.comm_device
        out = dict(targets)
        for r in range(p.world):
            if r != p.rank:
                for j, m in enumerate(held[r]):
                    out[m] = received[r][j].to(device)
        return out

    def reduce_step(self, loss: float, values: dict[str, float]) -> tuple[float, dict[str, float]]:
        parts = self.processes.all_gather((loss, values), "the all-gather of the step's losses")
        merged: dict[str, float] = {}
        for _, v in parts:
            merged.update(v)
        return sum(part[0] for part in parts), merged

    def combine_accuracies(self, local: dict[str, dict[str, float]],
                           count: int) -> dict[str, dict[str, float]]:
        # Each member evaluated on its own process, on every image.
        parts = self.processes.all_gather(local, "gathering the evaluation results")
        return {role: acc for part in parts for role, acc in part.items()}

    def checkpoint_part(self, state: dict, rank: int) -> dict:
        part = _with_rank_rng(state, rank, self.processes.world)
        for key in ("models", "optimizers", "schedulers"):
            part[key] = [v if self.owner(i) == rank else None for i, v in enumerate(state[key])]
        return part

    def members_on_main(self) -> bool:
        return False


def _with_rank_rng(state: dict, rank: int, world: int) -> dict:
    """A checkpoint with process ``rank``'s own RNG state, when it was written by as many
    processes; otherwise None for ranks above 0 (reseeded: not bit-exact)."""
    part = dict(state)
    ranks = state.get("rng_ranks")
    if ranks is not None and len(ranks) == world:
        part["rng"] = ranks[rank]
    elif rank > 0:
        part["rng"] = None
    return part


def make_placement(mode: str, processes: Processes, num_classes: int, sync_bn: bool) -> Local:
    """The placement of a run: :class:`Local` in one process, else the config's mode."""
    if processes.world == 1:
        return Local(processes, num_classes)
    if mode == "cohort":
        return CohortParallel(processes, num_classes)
    return DataParallel(processes, num_classes, sync_bn)
