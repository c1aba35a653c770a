"""Pick the compute device (the config names one, or the best available is chosen) and describe
the machine it is on (:func:`hardware_info`, for the records of runs and evaluations)."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from mutualat.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; any other name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    return device


#: The instruction sets that decide how fast a CPU trains, fastest first, as /proc/cpuinfo
#: names them, and as a record says them: bf16 matrix or vector units (without them bf16 is
#: emulated, an order of magnitude slower than fp32), else the widest vectors.
ISA = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX-512 BF16", "avx512f": "AVX-512",
       "avx2": "AVX2", "asimd": "NEON"}


def cpu_isa(flags: set[str]) -> str | None:
    """The first of :data:`ISA` among a CPU's ``flags``, in a record's words (None: none)."""
    return next((name for flag, name in ISA.items() if flag in flags), None)


def hardware_info(device: torch.device) -> dict[str, Any]:
    """The machine computing on ``device``: its CPU's model name, its fastest instruction set
    (:func:`cpu_isa`, where /proc/cpuinfo lists the flags) and the logical cores this process
    may use, the platform, and for CUDA the GPU's name and the CUDA version."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = [line.partition(":") for line in f]
    except OSError:
        fields = []
    names = [value.strip() for key, _, value in fields if key.strip() == "model name"]
    flags = [set(value.split()) for key, _, value in fields if key.strip() in ("flags", "Features")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    # The logical CPUs this process may use (a container's or taskset's share), not the host's.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {"device": str(device), "cpu": cpu, "cpu_count": cores,
                            "platform": platform.platform()}
    if flags and cpu_isa(flags[0]):
        info["isa"] = cpu_isa(flags[0])
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_record(device: torch.device) -> dict[str, Any]:
    """Where a computation ran, for its record: :func:`hardware_info` with the torch threads
    and torch version in use."""
    return {**hardware_info(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
