"""The runs whose weights must not change when the code is restructured (test_identity.py).

    python tests/identity_runs.py tests/data/identity    # (re)write the reference weights

Each is a few steps of a tiny run with random starts on, so that every random draw, every
loss and every update of the training loop is covered: AT, MAT with 2 and 3 members, MAT-MP,
and 2-process data-parallel AT and cohort-parallel MAT. The reference files were written by
the code before the Cohort/Trainer restructuring (issue 14); the test reruns the same
configs and requires bit-identical weights. Floating-point kernels differ between torch
releases and between a CPU's instruction sets (AVX2, AVX-512), so the files hold bit for bit
only on the platform recorded beside them in platform.json. The test reruns them in a fresh
process pinned to the recorded instruction set (:func:`pinned_environment`), so they hold on
any CPU that has it; elsewhere (another torch release, a CPU without it) the test skips.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch

COMMON = [
    "data.name=fashion-mnist-embedded", "data.train_subset=96", "data.val_subset=32",
    "data.batch_size=32", "models.0.name=tinycnn", "optim.epochs=2", "attack.eps=0.1",
    "attack.steps=2", "eval.pgd_steps=2", "eval.test=false", "device=cpu", "progress=false",
    "deterministic=true",
]
RUNS: dict[str, list[str]] = {
    "at": COMMON + ["method.name=at", "method.params.loss=lc"],
    "mat2": COMMON + ["method.name=mat", "models.1.name=tinycnn"],
    "mat3": COMMON + ["method.name=mat", "models.1.name=tinycnn", "models.2.name=tinycnn",
                      "method.params.alpha=0.5"],
    "matmp": COMMON + ["method.name=mat-mp", "models.1.name=tinycnn", "models.2.name=tinycnn",
                       "method.params.generalist=max",
                       "method.params.threats=[{norm: linf, eps: 0.1, steps: 2}, "
                       "{norm: l2, eps: 1.0, steps: 2}]"],
}
DISTRIBUTED: dict[str, list[str]] = {
    "data2": COMMON + ["method.name=at", "distributed.mode=data"],
    "cohort2": COMMON + ["method.name=mat", "models.1.name=tinycnn", "distributed.mode=cohort"],
}


PLATFORM_FILE = "platform.json"
#: The other libraries' names for the instruction set ATen calls AVX2 / AVX512: oneDNN (the
#: convolutions) and MKL (the matrix products) dispatch on the CPU's features by themselves.
_ONEDNN = {"AVX2": "AVX2", "AVX512": "AVX512_CORE"}
_MKL = {"AVX2": "AVX2", "AVX512": "AVX512"}


def platform() -> dict[str, str]:
    """What the reference bits depend on: the torch release (without its build suffix: a CUDA
    build runs the same CPU kernels) and the CPU kernels it dispatches to."""
    return {"torch": torch.__version__.split("+")[0],
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def pinned_environment(recorded: dict[str, str]) -> dict[str, str]:
    """The variables that make a new process compute with the ``recorded`` platform's CPU
    kernels on any CPU that has its instruction set: ATen's dispatch level and oneDNN's and
    MKL's highest instruction set. Measured on an AVX-512 machine against references written
    on AVX2: ATen's level alone left 13 of AT's 22 tensors different; with oneDNN's too,
    every run was bit-identical."""
    level = recorded["cpu_capability"]
    env = {"ATEN_CPU_CAPABILITY": level.lower()}
    if level in _ONEDNN:
        env.update(ONEDNN_MAX_CPU_ISA=_ONEDNN[level], MKL_ENABLE_INSTRUCTIONS=_MKL[level])
    return env


def train(overrides: list[str], out: Path) -> None:
    from mutualat.config import load_config
    from mutualat.train import Trainer

    Trainer(load_config(None, overrides), out).fit()


def weights(run: Path) -> dict[str, torch.Tensor]:
    from mutualat.train.checkpoint import load_checkpoint

    state = load_checkpoint(run / "checkpoint.pt")
    return {f"{i}.{k}": v for i, model in enumerate(state["models"]) for k, v in model.items()}


def _worker(rank: int, port: int, runs: list[tuple[str, list[str]]]) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    from mutualat.train.processes import release_groups

    for out, overrides in runs:
        train(overrides, Path(out))
    dist.destroy_process_group()
    release_groups()


def train_distributed(runs: dict[str, Path]) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, [(str(runs[k]), DISTRIBUTED[k]) for k in runs]),
                       nprocs=2, join=True, start_method="spawn")


def main(folder: str) -> None:
    from safetensors.torch import save_file
    import tempfile

    torch.set_num_threads(1)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in RUNS.items():
            train(overrides, Path(tmp) / name)
        train_distributed({k: Path(tmp) / k for k in DISTRIBUTED})
        for name in [*RUNS, *DISTRIBUTED]:
            save_file({k: v.contiguous() for k, v in weights(Path(tmp) / name).items()},
                      str(out / f"{name}.safetensors"))
            print(f"wrote {out / name}.safetensors")
    (out / PLATFORM_FILE).write_text(json.dumps(platform(), indent=2) + "\n")
    print(f"wrote {out / PLATFORM_FILE}: {platform()}")


if __name__ == "__main__":
    main(sys.argv[1])
