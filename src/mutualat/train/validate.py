"""Clean and PGD accuracy of a model on a split held as tensors (validation and final test)."""

from __future__ import annotations

import torch
from torch import nn

from mutualat.attacks import attack_mode
from mutualat.data import to_unit
from mutualat.methods.attacks import eval_pgd  # noqa: F401  (moved to methods/attacks.py; importable here as before)


def batched_correct(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack=None,
    batch_size: int = 256,
    bar=None,
) -> torch.Tensor:
    """Per-example correctness (bool, on the CPU), on clean images or on ``attack``'s output.

    ``images`` may be uint8 (converted to [0,1] here) or float; batches move to the model's
    device. The model is evaluated in eval mode and its previous mode restored. ``bar``: a
    tqdm bar advanced by one per batch.
    """
    device = next(model.parameters()).device
    flags = []
    with attack_mode(model, "eval"):
        for start in range(0, len(images), batch_size):
            x = to_unit(images[start : start + batch_size].to(device))
            y = labels[start : start + batch_size].to(device)
            if attack is not None:
                x = attack(model, x, y)
            with torch.no_grad():
                flags.append((model(x).argmax(dim=1) == y).cpu())
            if bar is not None:
                bar.update(1)
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def batched_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     attack=None, batch_size: int = 256) -> float:
    """Fraction classified correctly (see :func:`batched_correct`)."""
    return batched_correct(model, images, labels, attack, batch_size).float().mean().item() \
        if len(images) else 0.0


def robust_accuracies(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      attacks: dict, batch_size: int = 256,
                      progress: str | None = None) -> dict[str, float]:
    """Clean accuracy, accuracy under each attack, and ``"worst"``: per example, correct only
    if clean and every attack failed (the per-example worst case, never an average).

    ``progress``: the label of a progress bar over every batch of the clean pass and of each
    attack (None: no bar). Validation and the final test can take minutes; the bar says so.
    """
    from tqdm import tqdm

    batches = -(-len(images) // batch_size)
    bar = tqdm(total=batches * (1 + len(attacks)), desc=progress, disable=progress is None,
               leave=False, dynamic_ncols=True)
    try:
        clean = batched_correct(model, images, labels, None, batch_size, bar)
        result = {"clean": clean.float().mean().item()}
        worst = clean.clone()
        for name, attack in attacks.items():
            flags = batched_correct(model, images, labels, attack, batch_size, bar)
            result[name] = flags.float().mean().item()
            worst &= flags
    finally:
        bar.close()
    result["worst"] = worst.float().mean().item()
    return result
