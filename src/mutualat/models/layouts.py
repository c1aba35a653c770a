"""State-dict layouts of published checkpoints, mapped onto our architectures' names.

Our architectures keep the parameter names of the code the adversarial-training papers start
from (TRADES' WideResNet, kuangliu/pytorch-cifar's ResNet, Rice et al.'s PreActResNet), so a
layout is less about renaming layers than about what surrounds them in a saved file:

- ``mutualat``: our own names, input normalization in ``normalize.mean``/``normalize.std``
  (a ``torch.save(model.state_dict())`` of one of our models).
- ``trades``: the WideResNet of TRADES (Zhang et al. 2019, yaodongyu/TRADES
  ``models/wideresnet.py``), also used by MART and RobustBench
  (``robustbench/model_zoo/architectures/wide_resnet.py``). RobustBench builds some entries
  (``Carmon2019Unlabeled``, ``Zhang2019Theoretically``) with ``sub_block1``, a block the
  forward pass never calls: its weights are dropped. Trained on [0,1] pixels; RobustBench
  entries that normalize keep ``mu``/``sigma`` buffers, read as the normalization.
- ``kuangliu``: kuangliu/pytorch-cifar ``models/resnet.py`` (ResNet-18; TRADES' and MART's
  ResNet) and Rice et al.'s PreActResNet-18 (locuslab/robust_overfitting
  ``preactresnet.py``): the same names as ours; ``mu``/``sigma`` read as above.
- ``robustness``: MadryLab/robustness checkpoints (``{"model": ..., "epoch": ...}``): the
  network under ``model.``, a second copy under ``attacker.model.`` (dropped), and the
  normalization in ``normalizer.new_mean``/``new_std``. Its CIFAR ResNets are kuangliu's.

Before any layout, :func:`strip_wrappers` removes the prefixes that wrappers add to every
key: ``module.`` (``nn.DataParallel``/``DistributedDataParallel``) and ``_orig_mod.``
(``torch.compile``). A new layout is one :class:`Layout` registered in :data:`LAYOUTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from mutualat.errors import CheckpointError
from mutualat.registry import Registry

Tensors = dict[str, torch.Tensor]

#: The keys of our models' normalization layer (see :class:`mutualat.models.Normalize`).
NORMALIZE_KEYS = ("normalize.mean", "normalize.std")


@dataclass(frozen=True)
class Converted:
    """A state dict in our names (normalization keys removed) and the input normalization the
    file itself records (``None`` when it records none)."""

    tensors: Tensors
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass(frozen=True)
class Layout:
    name: str
    describe: str  # one line: whose checkpoints these are
    matches: Callable[[Mapping[str, torch.Tensor]], bool]  # is a (stripped) state dict of this layout?
    convert: Callable[[Mapping[str, torch.Tensor]], Converted]


LAYOUTS: Registry[Layout] = Registry("checkpoint layout")


def _register(layout: Layout) -> None:
    LAYOUTS.register(layout.name)(layout)


def strip_wrappers(tensors: Mapping[str, torch.Tensor]) -> Tensors:
    """Remove ``module.`` and ``_orig_mod.`` from the front of every key, as often as every
    key carries one (a compiled model inside DataParallel has both)."""
    out = dict(tensors)
    changed = True
    while changed and out:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def _channels(t: torch.Tensor) -> list[float]:
    # Stored as (C,), (C, 1, 1) or (1, C, 1, 1): one value per channel either way.
    return [float(v) for v in t.detach().to("cpu", torch.float64).flatten()]


def _split_normalization(tensors: Mapping[str, torch.Tensor], mean_key: str,
                         std_key: str) -> Converted:
    rest = {k: v for k, v in tensors.items() if k not in (mean_key, std_key)}
    if mean_key in tensors and std_key in tensors:
        return Converted(rest, _channels(tensors[mean_key]), _channels(tensors[std_key]))
    return Converted(rest)


def _has_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in tensors)


_register(Layout(
    name="mutualat",
    describe="our own names, normalization in normalize.mean/std (torch.save of a mutualat model)",
    matches=lambda t: all(k in t for k in NORMALIZE_KEYS),
    convert=lambda t: _split_normalization(t, *NORMALIZE_KEYS),
))


def _convert_trades(tensors: Mapping[str, torch.Tensor]) -> Converted:
    # sub_block1: defined by TRADES' WideResNet (and RobustBench's sub_block1=True entries)
    # but never called in forward, so its weights have no counterpart and no effect.
    kept = {k: v for k, v in tensors.items() if not k.startswith("sub_block1.")}
    return _split_normalization(kept, "mu", "sigma")


_register(Layout(
    name="trades",
    describe="TRADES / MART / RobustBench WideResNet (block1.layer.0.convShortcut, sub_block1 dropped, mu/sigma)",
    matches=lambda t: _has_prefix(t, "block1.layer.") or _has_prefix(t, "sub_block1."),
    convert=_convert_trades,
))

_register(Layout(
    name="kuangliu",
    describe="kuangliu/pytorch-cifar ResNet and Rice et al.'s PreActResNet (layer1.0.shortcut.0, linear; mu/sigma)",
    matches=lambda t: _has_prefix(t, "layer1.") and _has_prefix(t, "linear."),
    convert=lambda t: _split_normalization(t, "mu", "sigma"),
))


def _convert_robustness(tensors: Mapping[str, torch.Tensor]) -> Converted:
    # The attacker holds the same network again (shared weights at training time).
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    norm = {k: v for k, v in tensors.items() if k.startswith("normalizer.")}
    converted = _split_normalization({**model, **norm}, "normalizer.new_mean", "normalizer.new_std")
    return converted


_register(Layout(
    name="robustness",
    describe="MadryLab/robustness (model.*, attacker.model.* dropped, normalizer.new_mean/new_std)",
    matches=lambda t: _has_prefix(t, "model.") and (_has_prefix(t, "attacker.")
                                                    or _has_prefix(t, "normalizer.")),
    convert=_convert_robustness,
))


# --------------------------------------------------------------------------------------------
# Fitting a converted state dict to a model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """How well a state dict fits a model: every problem named."""

    missing: list[str]
    unexpected: list[str]
    misshaped: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped)

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.misshaped)

    def describe(self) -> str:
        """Every offending key, by kind: the message a user needs to fix the mapping."""
        parts = [f"{label} ({len(keys)}): {', '.join(keys)}"
                 for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                                     ("mis-shaped", self.misshaped)) if keys]
        return "; ".join(parts)


def fit(expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor]) -> Fit:
    """Compare a model's state dict (``expected``) with ``tensors``, ignoring normalization keys
    and a missing ``num_batches_tracked`` (files from PyTorch < 0.4.1 lack it; batch-norm then
    counts from 0, which only matters with ``momentum=None``)."""
    want = {k: v for k, v in expected.items() if k not in NORMALIZE_KEYS}
    missing = sorted(k for k in set(want) - set(tensors) if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(set(tensors) - set(want))
    misshaped = sorted(
        f"{k} (file {tuple(tensors[k].shape)}, model {tuple(want[k].shape)})"
        for k in set(want) & set(tensors) if tensors[k].shape != want[k].shape
    )
    return Fit(missing, unexpected, misshaped)


def candidates(tensors: Mapping[str, torch.Tensor],
               layout: str | None = None) -> list[tuple[str, Converted]]:
    """The conversions worth trying, most specific first: ``layout`` alone when given, else
    every layout that matches the (wrapper-stripped) keys, then the keys as they are."""
    stripped = strip_wrappers(tensors)
    if layout is not None:
        return [(layout, LAYOUTS.get(layout).convert(stripped))]
    found = [(name, LAYOUTS.get(name).convert(stripped)) for name in LAYOUTS
             if LAYOUTS.get(name).matches(stripped)]
    return found + [("as-is", Converted(stripped))]


def to_our_layout(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    layout: str | None = None,
    where: str = "checkpoint",
) -> tuple[str, Converted]:
    """Map a foreign state dict onto a model whose state dict is ``expected``.

    ``layout``: a name in :data:`LAYOUTS`, or None to try every layout whose :attr:`Layout.matches`
    accepts the keys (and the keys as they are, named ``"as-is"``) and take the first that fits.
    Returns ``(layout name, converted)``. Raises :class:`CheckpointError` naming every missing,
    unexpected and mis-shaped key of the closest candidate when nothing fits.
    """
    scored = [(fit(expected, c.tensors), name, c) for name, c in candidates(tensors, layout)]
    for result, name, converted in scored:
        if result.ok:
            return name, converted
    result, name, _ = min(scored, key=lambda s: s[0].size)
    tried = ", ".join(n for _, n, _ in scored)
    raise CheckpointError(
        f"{where}: the weights do not fit the architecture (closest layout: {name}; tried "
        f"{tried}): {result.describe()}. Check arch= and its options, or choose layout= "
        f"({', '.join(LAYOUTS.names())})"
    )


def load_converted(model: torch.nn.Module, converted: Converted) -> None:
    """Load ``converted.tensors`` (already checked by :func:`fit`) into ``model``; the
    normalization buffers are left as the model has them."""
    state = dict(converted.tensors)
    for key, value in model.state_dict().items():
        if key in NORMALIZE_KEYS or (key.endswith(".num_batches_tracked") and key not in state):
            state[key] = value
    model.load_state_dict(state, strict=True)
