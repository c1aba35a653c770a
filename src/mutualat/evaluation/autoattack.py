"""AutoAttack (Croce & Hein, ICML 2020) as an attack of a suite, when its package is installed.

``mutualat eval --suite autoattack`` runs the standard version (APGD-CE, APGD-T, FAB-T,
Square) of fra31's reference implementation through this wrapper, so the evaluator's
per-example bookkeeping, checks and summary apply to it unchanged. The package is an
optional extra, never a dependency of mutualat: ``pip install "mutualat[autoattack]"`` (or
``pip install pyautoattack``) installs the authors' code as packaged on the Python package
index (import name ``pyautoattack``); fra31's repository installed from git (import name
``autoattack``) is used when present. Their APIs differ slightly; both are handled here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mutualat.attacks.base import Attack
from mutualat.errors import ConfigError
from mutualat.attacks import OPTIONAL_ATTACKS

INSTALL_HINT = (
    "the autoattack suite needs Croce and Hein's AutoAttack package, which is not installed; "
    "install it with: pip install 'mutualat[autoattack]' (or pip install "
    "git+https://github.com/fra31/auto-attack)"
)
# Import names of AutoAttack, in the order tried: fra31's repository, then the package index's.
PACKAGES = ("autoattack", "pyautoattack")
_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
_COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def _autoattack_module() -> tuple[str, Any] | None:
    """(import name, module) of the installed AutoAttack: fra31's ``autoattack`` or the
    package index's ``pyautoattack``; None if neither is installed."""
    import importlib

    for name in PACKAGES:
        try:
            return name, importlib.import_module(name)
        except ImportError:
            continue
    return None


def autoattack_available() -> bool:
    return _autoattack_module() is not None


class AutoAttackWrapper(Attack):
    """AutoAttack's ``run_standard_evaluation`` on one batch.

    Args:
        norm: "linf", "l2" or "l1" (AutoAttack's Linf, L2, L1).
        eps: radius of the ball.
        version: "standard" (default), "plus" or "rand" (see AutoAttack's README), or
            "custom": only the AutoAttack components listed in ``attacks``, each with the
            standard version's settings (APGD-CE: 100 iterations, 1 restart, at l1 5
            restarts; APGD-T: 100 iterations, ``n_target_classes`` targets; at l1 both with
            AutoAttack's larger-radius schedule; FAB-T: 9 targets; Square: 5000 queries).
            A suite can so give APGD-CE and APGD-T columns of their own.
        attacks: with ``version="custom"``: some of apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square.
        n_target_classes: APGD-T's target classes with ``version="custom"`` (standard: 9;
            5 at l1).
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
        attacks: list[str] | None = None,
        n_target_classes: int = 9,
    ) -> None:
        super().__init__(bn_mode)
        if norm not in _NORMS:
            raise ConfigError(f"autoattack: norm must be one of {', '.join(_NORMS)}, got {norm!r}")
        if version not in ("standard", "plus", "rand", "custom"):
            raise ConfigError(
                f"autoattack: version must be standard, plus, rand or custom, got {version!r}")
        if (version == "custom") != (attacks is not None):
            raise ConfigError("autoattack: list the attacks exactly when version is custom")
        if attacks is not None and (not attacks or set(attacks) - set(_COMPONENTS)):
            raise ConfigError(f"autoattack: attacks must be some of {', '.join(_COMPONENTS)}, "
                              f"got {attacks!r}")
        if isinstance(n_target_classes, bool) or not isinstance(n_target_classes, int) \
                or not 1 <= n_target_classes <= 9:
            raise ConfigError(f"autoattack: n_target_classes must be 1..9, got {n_target_classes!r}")
        if not autoattack_available():
            raise ConfigError(INSTALL_HINT)
        self.norm, self.eps, self.version, self.seed = norm, float(eps), version, int(seed)
        self.attacks = list(attacks) if attacks is not None else None
        self.n_target_classes = n_target_classes

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        name, module = _autoattack_module()
        common = dict(norm=_NORMS[self.norm], eps=self.eps, version=self.version, seed=self.seed,
                      device=str(x.device))
        if name == "pyautoattack":  # keyword-only options, `batch_size`, no `verbose`
            runner = module.AutoAttack(model, attacks=self.attacks, **common)
            self._standard_settings(runner)
            x_adv, _ = runner.run_standard_evaluation(x, y, batch_size=x.shape[0])  # (x, y) pair
            return x_adv
        custom = {"attacks_to_run": self.attacks} if self.attacks is not None else {}
        runner = module.AutoAttack(model, verbose=False, **custom, **common)
        self._standard_settings(runner)
        return runner.run_standard_evaluation(x, y, bs=x.shape[0])

    def _standard_settings(self, runner: Any) -> None:
        """A custom run's components as the standard version sets them (its constructor's
        defaults differ: 5 restarts of APGD, for one)."""
        if self.version != "custom":
            return
        runner.apgd.n_restarts = 5 if self.norm == "l1" else 1
        runner.apgd_targeted.n_restarts = 1
        if self.norm == "l1":  # AutoAttack's standard at L1
            runner.apgd.use_largereps = runner.apgd_targeted.use_largereps = True
        runner.apgd_targeted.n_target_classes = self.n_target_classes
        runner.fab.n_restarts = 1
        runner.fab.n_target_classes = 9
        runner.square.n_queries = 5000


# Registered for suites only, not in mutualat.attacks.ATTACKS: it wraps an optional package
# (see OPTIONAL_ATTACKS). A registered attack of the same name would take precedence.
OPTIONAL_ATTACKS.register("autoattack")(AutoAttackWrapper)
