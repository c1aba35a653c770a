"""The losses a gradient attack maximizes, by name, and their gradient at the input.

Every objective has the signature ``(logits_adv, y, logits_clean) -> (B,)`` per-example
loss; ``logits_clean`` (the model's logits on the clean batch, computed once without
gradient) is ``None`` unless the objective asks for it. Attacks sum the per-example losses
before differentiating, so each example's gradient is independent of the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from mutualat.errors import ConfigError
from mutualat.losses import boosted_cross_entropy, cross_entropy, cw_margin, dlr_loss, kl_divergence

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    fn: LossFn
    #: whether ``fn`` reads ``logits_clean`` (one extra forward pass per attack).
    needs_clean: bool


def _trades_kl(
    logits_adv: torch.Tensor, y: torch.Tensor, logits_clean: torch.Tensor | None
) -> torch.Tensor:
    # TRADES (Zhang et al., ICML 2019): KL(f(x) || f(x')), the clean prediction is the target.
    assert logits_clean is not None
    return kl_divergence(logits_clean, logits_adv, reduction="none")


OBJECTIVES: dict[str, Objective] = {
    "ce": Objective(lambda z, y, _: cross_entropy(z, y, reduction="none"), False),
    # MART's boosted cross-entropy L_C, the training attack's loss in MAT (docs/METHOD.md §6).
    "lc": Objective(lambda z, y, _: boosted_cross_entropy(z, y, reduction="none"), False),
    "cw": Objective(lambda z, y, _: cw_margin(z, y, reduction="none"), False),
    "dlr": Objective(lambda z, y, _: dlr_loss(z, y, reduction="none"), False),
    "trades_kl": Objective(_trades_kl, True),
}


def resolve_objective(loss: str | LossFn) -> Objective:
    """A name from :data:`OBJECTIVES`, or a callable (which always receives clean logits)."""
    if callable(loss):
        return Objective(loss, True)
    try:
        return OBJECTIVES[loss]
    except KeyError:
        raise ConfigError(
            f"unknown attack loss {loss!r}; known: {', '.join(sorted(OBJECTIVES))} or a callable"
        ) from None


def input_gradient(
    model: nn.Module,
    objective: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    logits_clean: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of the summed per-example loss at ``x + delta``, the logits and the losses.

    ``torch.autograd.grad`` with respect to the input only: parameter ``.grad`` is untouched.
    """
    delta = delta.detach().requires_grad_(True)
    logits = model(x + delta)
    losses = objective.fn(logits, y, logits_clean)
    (grad,) = torch.autograd.grad(losses.sum(), delta)
    return grad, logits.detach(), losses.detach()
