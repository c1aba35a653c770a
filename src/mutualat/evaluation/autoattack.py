"""AutoAttack (Croce & Hein, ICML 2020) as an attack of a suite, when its package is installed.

``mutualat eval --suite autoattack`` runs the standard version (APGD-CE, APGD-T, FAB-T,
Square) of fra31's reference implementation through this wrapper, so the evaluator's
per-example bookkeeping, checks and summary apply to it unchanged. The package is an
optional extra, never a dependency of mutualat: install it with
``pip install git+https://github.com/fra31/auto-attack``.
"""

from __future__ import annotations

import torch
from torch import nn

from mutualat.attacks.base import Attack
from mutualat.errors import ConfigError
from mutualat.evaluation.suite import OPTIONAL_ATTACKS

INSTALL_HINT = (
    "the autoattack suite needs fra31's AutoAttack package, which is not installed; "
    "install it with: pip install git+https://github.com/fra31/auto-attack"
)
_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def autoattack_available() -> bool:
    try:
        import autoattack  # noqa: F401
    except ImportError:
        return False
    return True


class AutoAttackWrapper(Attack):
    """AutoAttack's ``run_standard_evaluation`` on one batch.

    Args:
        norm: "linf", "l2" or "l1" (AutoAttack's Linf, L2, L1).
        eps: radius of the ball.
        version: "standard" (default), "plus" or "rand" (see AutoAttack's README).
        seed: AutoAttack's own seed (default 0, so a rerun is repeatable).
        bn_mode: "eval" (default) or "train".

    Returns AutoAttack's adversarial batch: the found point where it broke the model, the
    clean ``x`` elsewhere. Shapes: ``x`` (B, C, H, W) in [0,1], ``y`` (B,) -> (B, C, H, W).
    """

    def __init__(
        self,
        norm: str = "linf",
        eps: float = 8 / 255,
        version: str = "standard",
        seed: int = 0,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(bn_mode)
        if norm not in _NORMS:
            raise ConfigError(f"autoattack: norm must be one of {', '.join(_NORMS)}, got {norm!r}")
        if version not in ("standard", "plus", "rand"):
            raise ConfigError(f"autoattack: version must be standard, plus or rand, got {version!r}")
        if not autoattack_available():
            raise ConfigError(INSTALL_HINT)
        self.norm, self.eps, self.version, self.seed = norm, float(eps), version, int(seed)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from autoattack import AutoAttack

        runner = AutoAttack(model, norm=_NORMS[self.norm], eps=self.eps, version=self.version,
                            seed=self.seed, verbose=False, device=str(x.device))
        return runner.run_standard_evaluation(x, y, bs=x.shape[0])


# Registered for suites only, not in mutualat.attacks.ATTACKS: it wraps an optional package
# (see OPTIONAL_ATTACKS). A registered attack of the same name would take precedence.
OPTIONAL_ATTACKS.register("autoattack")(AutoAttackWrapper)
