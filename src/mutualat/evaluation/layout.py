"""The memory layout the evaluator runs a model in: channels_last (NHWC) or contiguous (NCHW).

Both layouts compute in fp32 with the same weights. They differ only in the order of the
floating-point sums inside a convolution, which is the same kind of difference as another
thread count or processor. So the layout is not part of an evaluation's identity: a folder
resumed in the other layout continues. Each attack's record says which layout it ran in.

``channels_last`` takes three values:

- ``"auto"`` (the default): channels_last on the CPU for a model with 2-D convolutions. Every
  architecture in the registry ran an attack step 1.07-1.5x faster that way (fp32, one
  thread: docs/PERFORMANCE.md, ``benchmarks/bench_eval.py``). Elsewhere (CUDA, MPS) it stays
  contiguous, because fp32 channels_last was not measured there.
- ``"on"``: channels_last on any device.
- ``"off"``: the model is never converted; it runs in the layout its weights have (a model
  already converted by its owner stays channels_last, and its record says so).

Before a model runs in channels_last it passes a **probe**: its logits and its input gradient
on two examples, in both layouts, must agree. A model that reshapes its activations as if they
were NCHW (``x.view(n, -1)`` after a convolution) fails or disagrees. Under "auto" such a model
stays contiguous, and the log says why; under "on" it is an error naming the model. The
choice depends only on the device, the model and its input, never on a timing, so two runs
of one evaluation choose alike.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mutualat.attacks.base import attack_mode
from mutualat.errors import ConfigError
from mutualat.train.precision import AutocastModel

CHOICES = ("auto", "on", "off")
CHANNELS_LAST, CONTIGUOUS = "channels_last", "contiguous"

logger = logging.getLogger(__name__)


class ChannelsLast(nn.Module):
    """``model`` (already converted) fed channels_last input. Its logits are the model's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def check_choice(channels_last: str) -> None:
    if channels_last not in CHOICES:
        raise ConfigError(f"channels_last must be one of {', '.join(CHOICES)}, got {channels_last!r}")


def in_layout(name: str, model: nn.Module, x: torch.Tensor, channels_last: str,
              device: torch.device) -> tuple[nn.Module, str]:
    """``model`` as the evaluator should run it, and the layout's name.

    ``x`` is a small float batch on ``device`` for the probe. Under channels_last the
    model's parameters are converted in place (their values are unchanged). A model under
    bf16 autocast is probed in fp32 (its layouts would differ by bf16's rounding)."""
    check_choice(channels_last)
    if isinstance(model, AutocastModel):
        inner, layout = in_layout(name, model.model, x, channels_last, device)
        return AutocastModel(inner), layout
    wanted = channels_last == "on" or (channels_last == "auto" and device.type == "cpu")
    if not wanted or x.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        if wanted:
            logger.info(f"{name}: not converted to channels_last, which needs 4-D input and a "
                        "2-D convolution")
        return model, layout_of(model)
    problem = _probe(model, x)
    if problem is None:
        return ChannelsLast(model), CHANNELS_LAST
    model.to(memory_format=torch.contiguous_format)
    if channels_last == "on":
        raise ConfigError(f"model {name!r} cannot run in channels_last: {problem}; evaluate it "
                          "with channels_last off")
    logger.info(f"{name}: stays contiguous: in channels_last {problem}")
    return model, CONTIGUOUS


def layout_of(model: nn.Module) -> str:
    """The layout of ``model``'s 4-D weights: contiguous (also when it has none),
    channels_last, or "mixed"."""
    weights = [p for p in model.parameters() if p.dim() == 4 and not p.is_contiguous()]
    if not weights:
        return CONTIGUOUS
    if all(p.is_contiguous(memory_format=torch.channels_last) for p in weights):
        return CHANNELS_LAST
    return "mixed"


def _probe(model: nn.Module, x: torch.Tensor) -> str | None:
    """None if ``model``'s logits and input gradient on ``x`` agree in both layouts (the
    model is left converted to channels_last); else what went wrong."""
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), attack_mode(model, "eval"):
        model.to(memory_format=torch.contiguous_format)  # an ensemble's members may be converted
        reference = _logits_and_gradient(model, x.contiguous())
        try:
            model.to(memory_format=torch.channels_last)
            converted = _logits_and_gradient(model, x.contiguous(memory_format=torch.channels_last))
        except RuntimeError as exc:
            return f"it raised {type(exc).__name__}: {str(exc).splitlines()[0]}"
    for what, a, b in zip(("logits", "input gradient"), reference, converted):
        scale = float(a.abs().max()) or 1.0
        if not torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale):
            return (f"its {what} differ from the contiguous layout's by up to "
                    f"{float((a - b).abs().max()):.3g} (largest magnitude {scale:.3g})")
    return None


def _logits_and_gradient(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.float().logsumexp(dim=1).sum(), x)
    return logits.detach().float(), grad
