"""Loss functions shared by the training methods and the attacks.

All take logits of shape ``(B, K)`` and integer labels of shape ``(B,)``. ``reduction`` is
``"mean"`` (a scalar averaged over the batch), ``"sum"`` or ``"none"`` (shape ``(B,)``).
KL terms sum over classes and average over the batch (PyTorch's ``batchmean``), temperature 1
unless stated (docs/METHOD.md §6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Probabilities are clamped away from 0 before a log so a confident model gives a large,
# finite loss rather than inf/NaN gradients (MART's code adds 1e-12 for the same reason).
_EPS = 1e-12


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise ValueError(f"unknown reduction {reduction!r}; expected 'mean', 'sum' or 'none'")


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return _reduce(F.cross_entropy(logits.float(), y, reduction="none"), reduction)


def max_other_prob(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{k != y} p_k`` per example, shape ``(B,)``."""
    masked = probs.scatter(1, y[:, None], float("-inf"))
    return masked.max(dim=1).values


def boosted_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """MART's boosted cross-entropy ``L_C(p, y) = -log p_y - log(1 - max_{k!=y} p_k)``.

    Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified
    Examples" (ICLR 2020), Eq. 6; the classification loss of MAT (docs/METHOD.md §1).
    """
    logits = logits.float()
    log_probs = F.log_softmax(logits, dim=1)
    ce = -log_probs.gather(1, y[:, None]).squeeze(1)
    margin = -torch.log((1.0 - max_other_prob(log_probs.exp(), y)).clamp_min(_EPS))
    return _reduce(ce + margin, reduction)


#: The label losses a method may train on (``method.params.loss``): Madry's cross-entropy, or
#: MART's boosted cross-entropy L_C, the MAT paper's (Eq. 1).
CLASSIFICATION_LOSSES = {"ce": cross_entropy, "lc": boosted_cross_entropy}


def kl_divergence(
    target_logits: torch.Tensor,
    input_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """``KL(softmax(target/T) || softmax(input/T))`` summed over classes.

    With ``reduction="mean"`` this is PyTorch's ``batchmean``. Gradients flow into both
    arguments: callers distilling from a peer must pass a detached target (see
    :func:`distillation_kl`); TRADES deliberately keeps both paths.
    """
    t = F.log_softmax(target_logits.float() / temperature, dim=1)
    s = F.log_softmax(input_logits.float() / temperature, dim=1)
    per_example = (t.exp() * (t - s)).sum(dim=1)
    return _reduce(per_example, reduction)


def distillation_kl(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL from a teacher's (or peer's) soft labels, which are a target and never a gradient path."""
    return kl_divergence(teacher_logits.detach(), student_logits, temperature, reduction)


def cw_margin(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Carlini-Wagner margin ``max_{k!=y} z_k - z_y``: positive iff the example is misclassified."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return _reduce(other - true, reduction)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Croce & Hein's difference-of-logits-ratio loss (ICML 2020), scale invariant; K >= 3."""
    logits = logits.float()
    sorted_logits, _ = logits.sort(dim=1)
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    denom = sorted_logits[:, -1] - sorted_logits[:, -3] + _EPS
    return _reduce(-(true - other) / denom, reduction)
