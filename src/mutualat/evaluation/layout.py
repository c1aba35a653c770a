"""The memory layout the evaluator runs a model in: channels_last (NHWC) or contiguous (NCHW).

Both layouts compute in fp32 with the same weights. They differ only in the order of the
floating-point sums inside a convolution, which is the same kind of difference as another
thread count or processor. So the layout is not part of an evaluation's identity: a folder
resumed in the other layout continues. Each attack's record says which layout it ran in.

``channels_last`` takes three values:

- ``"auto"`` (the default): channels_last on the CPU for a model with 2-D convolutions. Each
  architecture timed there ran an attack step 1.03-1.39x faster that way at batch 128, and
  the evaluator 1.34x faster (fp32, one thread: docs/PERFORMANCE.md,
  ``benchmarks/bench_layout.py`` and ``bench_eval.py``). Elsewhere (CUDA, MPS) it stays
  contiguous, because fp32 channels_last was not measured there.
- ``"on"``: channels_last on any device.
- ``"off"``: the model is never converted; it runs in the layout its weights have (a model
  already converted by its owner stays channels_last, and its record says so).

Before a model runs in channels_last, a copy of it passes a **probe**: its logits and its
input gradient on two examples, in both layouts, must agree up to fp32 rounding. A model that
reshapes its activations as if they were NCHW (``x.view(n, -1)`` after a convolution) fails or
disagrees. Under "auto" such a model stays as it is, and the log says why; under "on" it is
an error naming the model. The choice depends only on the device, the model and its input,
never on a timing, so two runs of one evaluation choose alike. The evaluator puts every
model's layout back when it returns (:func:`laid_out`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Iterable, Iterator

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

    ``x`` is a small float batch on ``device`` for the probe, which runs on a copy of the
    model. Only a model that passes it is converted, in place (its values unchanged; run the
    evaluation inside :func:`laid_out` to have the layout put back afterwards). A model
    under bf16 autocast is probed in fp32 (its layouts would differ by bf16's rounding)."""
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
        return ChannelsLast(model.to(memory_format=torch.channels_last)), CHANNELS_LAST
    if channels_last == "on":
        raise ConfigError(f"model {name!r} cannot run in channels_last: {problem}; evaluate it "
                          "with channels_last off")
    logger.info(f"{name}: not converted to channels_last: {problem}")
    return model, layout_of(model)


def layout_of(model: nn.Module) -> str:
    """The layout of ``model``'s 4-D weights: channels_last, contiguous (also when it has
    none, or only weights both layouts store alike, such as a one-channel input's), or
    "mixed"."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    cl = any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
             for p in weights)
    nchw = any(p.is_contiguous() and not p.is_contiguous(memory_format=torch.channels_last)
               for p in weights)
    return "mixed" if cl and nchw else CHANNELS_LAST if cl else CONTIGUOUS


@contextlib.contextmanager
def laid_out(models: Iterable[tuple[str, nn.Module]], x: torch.Tensor, channels_last: str,
             device: torch.device) -> Iterator[dict[int, tuple[nn.Module, str]]]:
    """Each of the ``(name, model)`` pairs as the evaluator should run it, with its layout's
    name (:func:`in_layout`, probed on ``x``), keyed by ``id(model)``: a module under several
    names (a model both source and target, an ensemble's members) is laid out once. On
    leaving, every model's parameters and buffers are put back as they were, so the caller's
    models keep their layout (code that views a weight as a vector still works, and a later
    evaluation with channels_last "off" runs in the layout the owner chose)."""
    pairs = list(models)
    tensors = {id(t): (t, t.data) for _, m in pairs for t in (*m.parameters(), *m.buffers())}
    try:
        laid: dict[int, tuple[nn.Module, str]] = {}
        for name, model in pairs:
            if id(model) not in laid:
                laid[id(model)] = in_layout(name, model, x, channels_last, device)
        yield laid
    finally:
        for tensor, data in tensors.values():
            if tensor.data.data_ptr() != data.data_ptr():
                tensor.data = data


def _probe(model: nn.Module, x: torch.Tensor) -> str | None:
    """None if a copy of ``model`` gives the same logits and input gradient on ``x`` in both
    layouts; else what went wrong.

    "The same" up to fp32's own rounding: the relative difference (norm of the difference
    over the norm) at most 1e-3 for the logits and 5e-2 for the input gradient. Measured on
    the registry's untrained models: logits 1e-6, gradients up to 4.9e-3 (WRN-34-10), whose
    small entries move when a ReLU meets a near-tie (two contiguous kernels differ that much
    too). A model that reads its activations in the wrong order is off by a relative
    difference of order one."""
    try:
        twin = copy.deepcopy(model)
    except Exception as exc:  # a module that cannot be copied is not probed, so not converted
        return f"it could not be copied for the probe ({type(exc).__name__}: {exc})"
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), attack_mode(twin, "eval"):
        reference = _logits_and_gradient(twin.to(memory_format=torch.contiguous_format),
                                          x.contiguous())
        try:
            converted = _logits_and_gradient(twin.to(memory_format=torch.channels_last),
                                              x.contiguous(memory_format=torch.channels_last))
        except RuntimeError as exc:
            return f"it raised {type(exc).__name__}: {str(exc).splitlines()[0]}"
    (logits, grad), (cl_logits, cl_grad) = reference, converted
    for what, a, b, tol in (("logits", logits, cl_logits, 1e-3),
                            ("input gradient", grad, cl_grad, 5e-2)):
        relative = float((a - b).norm() / a.norm().clamp_min(1e-30))
        if not relative <= tol:
            return (f"its {what} differ from the contiguous layout's by {relative:.3g} "
                    f"(relative; fp32 rounding stays under {tol:g})")
    return None


def _logits_and_gradient(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and the input gradient of a weighted sum of them, the weights rising with the
    class index. Not their logsumexp: for a model that returns log-probabilities (an
    :class:`~mutualat.models.ensemble.Ensemble`, a net ending in ``log_softmax``) that is 0
    for every input, its gradient only rounding noise, and the probe refused such a model
    whatever its layout did."""
    torch.manual_seed(0)
    x = x.detach().clone().requires_grad_(True)
    logits = model(x).float()
    weights = torch.arange(1, logits.shape[1] + 1, device=logits.device, dtype=logits.dtype)
    (grad,) = torch.autograd.grad((logits * weights / logits.shape[1]).sum(), x)
    return logits.detach(), grad
