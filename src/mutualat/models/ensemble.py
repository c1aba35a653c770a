"""A cohort as one model, and loading a cohort run's members."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mutualat.errors import CheckpointError, ConfigError
from mutualat.models.io import load_model


class Ensemble(nn.Module):
    """The mean of the members' softmax outputs, returned as log-probabilities.

    ``log(mean_n softmax(h_n(x)))`` is a valid logit vector (its softmax is the mean
    probability, its argmax the ensemble's decision), so every attack and the cross-entropy
    see the ensemble exactly. Shapes: (B, C, H, W) -> (B, K).
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError("an ensemble needs at least two models")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([torch.log_softmax(m(x), dim=1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(len(self.members))))


def load_cohort(run_dir: str | Path, best: bool = False, device: str = "cpu") -> dict[str, nn.Module]:
    """Every member a training run saved, by role (``h1``, ``h2``, ... or ``model``).

    ``best``: the members selected by validation PGD accuracy instead of the last ones.
    """
    folder = Path(run_dir) / "models"
    files = sorted(folder.glob("*.best.safetensors" if best else "*.safetensors"))
    files = [f for f in files if best or not f.name.endswith(".best.safetensors")]
    if not files:
        raise CheckpointError(f"no saved models in {folder}")
    suffix = ".best.safetensors" if best else ".safetensors"
    return {f.name[: -len(suffix)]: load_model(f, device=device) for f in files}


def load_ensemble(run_dir: str | Path, best: bool = False, device: str = "cpu") -> Ensemble:
    """A cohort run's members as one model: the mean of their softmax outputs (eval mode)."""
    return Ensemble(list(load_cohort(run_dir, best, device).values())).eval()
