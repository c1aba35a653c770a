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


def hardware_info(device: torch.device) -> dict[str, Any]:
    """The machine computing on ``device``: its CPU's model name and the logical cores this
    process may use, the platform, and for CUDA the GPU's name and the CUDA version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # The logical CPUs this process may use (a container's or taskset's share), not the host's.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {"device": str(device), "cpu": cpu, "cpu_count": cores,
                            "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_record(device: torch.device) -> dict[str, Any]:
    """Where a computation ran, for its record: :func:`hardware_info` with the torch threads
    and torch version in use."""
    return {**hardware_info(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
