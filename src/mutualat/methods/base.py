"""A training method is a loss over a cohort of models.

The trainer owns the models, their modes and their optimizers; a method only computes
``StepResult.loss`` for one batch (crafting whatever adversarial examples it needs) from the
:class:`~mutualat.train.cohort.Cohort` it is given, and never steps an optimizer or switches a
model's mode: attacks switch to eval mode and restore the caller's mode themselves (see
:mod:`mutualat.attacks.base`). Trainable members arrive in train mode, frozen members (fixed
teachers) in eval mode. Where the members run (one process, several) is the cohort's
business: a method sees the members it trains here and its peers' clean predictions.

A cohort of one is plain adversarial training; MAT, ACT and MAT-MP use several members.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch

from mutualat.attacks.threat import Threat
from mutualat.config import AttackConfig, RunConfig, from_dict
from mutualat.errors import ConfigError
from mutualat.methods.attacks import eval_pgd
from mutualat.registry import Registry

if TYPE_CHECKING:
    from mutualat.train.cohort import Cohort

METHODS: Registry = Registry("method")


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar: its gradient updates every trainable member
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars to log


@dataclass
class NoParams:
    pass


class Method:
    """Base class: subclasses set ``Params`` (a dataclass) and implement :meth:`loss`."""

    Params: ClassVar[type] = NoParams
    # Cohort-parallel training (``distributed.mode: cohort``, mutualat.train.placement)
    # splits the members over processes. A method whose members interact only through
    # detached clean soft labels (``Cohort.peer_targets``) supports it and says so here.
    cohort_parallel: ClassVar[bool] = False

    def __init__(self, params: Any, attack: AttackConfig, frozen: Sequence[bool]) -> None:
        self.params = params
        self.attack_cfg = attack
        self.frozen = list(frozen)  # frozen members get no gradient: skip their own losses
        self.roles = self.member_roles(len(self.frozen))
        self.target_members: list[int] = []  # members whose clean predictions the loss uses
        # Completed training steps / all steps, set by the trainer before each step; a loss
        # whose weights follow a schedule (MAT's alpha_warmup) reads it.
        self.progress = 1.0

    def member_roles(self, num_models: int) -> list[str]:
        """Names of the cohort members, in the order of ``RunConfig.models``."""
        if num_models == 1:
            return ["model"]
        return [f"h{i + 1}" for i in range(num_models)]

    def loss(self, cohort: "Cohort", x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """The training loss of one batch ``x`` (B, C, H, W) in [0,1], ``y`` (B,): a scalar
        whose gradient updates every member ``cohort.trained()`` lists."""
        raise NotImplementedError

    def validation_attacks(self, steps: int, step_size: float | None = None) -> dict[str, Any]:
        """Threat name -> the evaluation attack for per-epoch validation and the final test.

        One PGD in the training threat model by default; multi-perturbation methods return one
        per threat, and the trainer reports each and their per-example worst case.
        """
        return {self.attack_cfg.norm: eval_pgd(self.attack_cfg, steps, step_size)}

    def threats(self) -> list[Threat]:
        """The threats the members are trained against: what their model files record, and
        what ``mutualat transfer`` and ``eval`` take as a model's own threat."""
        return [self.attack_cfg.threat]

    def threat_radii(self) -> list[tuple[str, str, float]]:
        """``(config key, norm, eps)`` of every ball the method attacks in; the trainer checks
        each against the input space once the data is loaded."""
        return [("attack.eps", self.attack_cfg.norm, self.attack_cfg.eps)]

    def describe(self) -> dict[str, Any]:
        """What a saved model records about the method that trained it."""
        return {"name": type(self).registered_name, **dataclasses.asdict(self.params)}

    registered_name: ClassVar[str] = ""


def register_method(name: str):
    """``@register_method("mat")``: register a :class:`Method` subclass under ``name``."""

    def wrap(cls: type[Method]) -> type[Method]:
        cls.registered_name = name
        return METHODS.register(name)(cls)

    return wrap


def _params(cfg: RunConfig) -> Any:
    cls = METHODS.get(cfg.method.name)
    params = from_dict(cls.Params, cfg.method.params, "method.params")
    check = getattr(params, "validate", None)
    if check is not None:
        check()
    return params


def resolve_method_params(cfg: RunConfig) -> RunConfig:
    """Fill the method's defaults into ``cfg.method.params`` so the saved config is complete."""
    cfg.method.params = dataclasses.asdict(_params(cfg))
    return cfg


def build_method(cfg: RunConfig) -> Method:
    cls = METHODS.get(cfg.method.name)
    method = cls(_params(cfg), cfg.attack, [m.frozen for m in cfg.models])
    if len(method.roles) != len(cfg.models):
        raise ConfigError(
            f"method {cfg.method.name!r} needs {len(method.roles)} models, config lists {len(cfg.models)}"
        )
    return method


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == y).float().mean().detach()
