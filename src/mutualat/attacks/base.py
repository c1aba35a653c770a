"""The protocol every attack follows: ``attack(model, x, y) -> x_adv``.

- ``x`` is a float batch ``(B, C, H, W)`` of [0,1] pixels on any device, ``y`` int64 ``(B,)``.
- During the attack the model runs in eval mode (batch-norm uses its running statistics and
  they are never updated) unless the attack was built with ``bn_mode="train"``; either way
  every submodule's previous ``training`` flag is restored afterwards, and batch-norm running
  statistics are restored too in train mode, so an attack never changes the model.
- The result lies inside the threat model's ball around ``x`` and in [0,1], detached, on the
  same device and dtype as ``x``. Minimum-norm attacks are judged at the threat model's
  epsilon: what they return is the found point if it is inside the ball, else its projection.
- Parameter gradients are neither accumulated nor zeroed: attacks use ``torch.autograd.grad``
  with respect to the input only.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from mutualat.errors import ConfigError
from mutualat.registry import Registry

# Every attack declares at its registration its family and small example settings (see
# Example): @ATTACKS.register("pgd", family="gradient", examples=(Example(...), ...)).
ATTACKS: Registry = Registry("attack", declares=("family", "examples"))

#: The families of attacks: ``"gradient"`` (white-box, in an lp ball: PGD, C&W, ...),
#: ``"decision"`` (black-box: noise and decision-based attacks) and ``"unforeseen"``
#: (parameter-space corruptions: Fog, Gabor, Elastic). Each family has its property tests.
FAMILIES = ("gradient", "decision", "unforeseen")


@dataclass(frozen=True)
class Example:
    """Small settings of a registered attack, declared beside it at its registration::

        @ATTACKS.register("pgd", family="gradient", examples=(
            Example(dict(norm="linf", eps=8 / 255, steps=3)),
            Example(dict(norm="l2", eps=0.5, steps=3, restarts=2), "l2"),
        ))

    The every-entry property tests (tests/test_attacks_*.py) run each registered attack with
    each of its examples on a tiny model and 8x8 images, in a fraction of a second, so a new
    attack is tested as soon as it is registered. They are also a working call to copy.

    ``settings``: keyword arguments of the attack. ``name``: tells the examples of one attack
    apart (test ids ``pgd``, ``pgd-l2``). ``strong``: for decision-based and unforeseen
    attacks, settings (over ``settings``) at which the attack must break most of a random
    linear classifier whose decisions have tiny margins.
    """

    settings: Mapping[str, Any]
    name: str = ""
    strong: Mapping[str, Any] | None = None


@contextlib.contextmanager
def attack_mode(model: nn.Module, bn_mode: str = "eval") -> Iterator[nn.Module]:
    """Put ``model`` in eval (or train) mode for an attack and restore it exactly afterwards."""
    if bn_mode not in ("eval", "train"):
        raise ConfigError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    flags = [(m, m.training) for m in model.modules()]
    saved_stats: dict[str, torch.Tensor] = {}
    if bn_mode == "train":
        # Train-mode attacks (as in Maini et al.'s and ARD's code) normalize with batch
        # statistics; the running buffers they would update are put back afterwards.
        saved_stats = {k: v.detach().clone() for k, v in model.named_buffers()}
    model.train(bn_mode == "train")
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag
        if saved_stats:
            with torch.no_grad():
                for name, buf in model.named_buffers():
                    buf.copy_(saved_stats[name])


class Attack:
    """Base class. Subclasses implement :meth:`perturb`; callers use ``attack(model, x, y)``."""

    #: ``"linf"``, ``"l2"``, ``"l1"`` or ``None`` for attacks without an lp budget (Fog, Gabor, ...).
    norm: str | None = None
    eps: float | None = None
    #: Whether the attack searches for the smallest perturbation that misclassifies (C&W, DDN,
    #: DeepFool, Pointwise, Boundary); what it returns is judged at ``eps`` (see above).
    minimum_norm: bool = False

    def __init__(self, bn_mode: str = "eval") -> None:
        if bn_mode not in ("eval", "train"):
            raise ConfigError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
        self.bn_mode = bn_mode

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
        if y.shape != x.shape[:1]:
            raise ValueError(f"labels of shape {tuple(y.shape)} do not fit images {tuple(x.shape)}")
        with attack_mode(model, self.bn_mode):
            x_adv = self.perturb(model, x.detach(), y.detach())
        return x_adv.detach().to(dtype=x.dtype)

    def bind(self, model: nn.Module) -> "BoundAttack":
        """This attack fixed to ``model``: ``attack.bind(model)(x, y)``, the call shape of
        torchattacks (``PGD(model, eps=...)(images, labels)``) for code written against it.
        The attack stays model-free; the binding holds both."""
        return BoundAttack(self, model)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class BoundAttack:
    """An :class:`Attack` and the model it runs on: ``bound(x, y) -> x_adv``, same contract."""

    def __init__(self, attack: Attack, model: nn.Module) -> None:
        self.attack = attack
        self.model = model

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.attack(self.model, x, y)

    def __repr__(self) -> str:
        return f"{self.attack!r}.bind({type(self.model).__name__})"


def warn_if_zero_gradient(grad: torch.Tensor, attack: str) -> None:
    """Say why a gradient attack makes no progress instead of silently returning ``x``."""
    if grad.abs().amax() == 0:
        warnings.warn(
            f"{attack}: the input gradient is exactly zero for the whole batch, so the attack "
            "cannot move; the model may be constant or masking gradients (its robust accuracy "
            "under gradient attacks says nothing).",
            RuntimeWarning,
            stacklevel=3,
        )


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is an int >= 1 (not a bool), else a :class:`ConfigError` naming ``name``:
    the check of every attack's step and restart counts."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_positive(name: str, value: object) -> float:
    """``value`` as a float if it is a number > 0 (not a bool), else a :class:`ConfigError`
    naming ``name``: the check of every attack's radii and step sizes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def create_attack(name: str, **kwargs: object) -> Attack:
    """Build a registered attack by name, e.g. ``create_attack("pgd", norm="linf", eps=8/255)``."""
    return ATTACKS.get(name)(**kwargs)
