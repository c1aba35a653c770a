"""Attacks: threat models (:mod:`.threat`) apart from attack loops, one attack per module.

Importing this package imports every attack module, so each registers itself in
:data:`ATTACKS` with its family and small example settings (:class:`Example`, what the
property tests run it with); build one by name with :func:`create_attack`.
"""

# Every attack module, imported for its registration (gradient attacks, then the
# decision-based, noise and unforeseen ones).
from mutualat.attacks import apgd, cw, ddn, deepfool, fgsm, mim, msd, pgd  # noqa: F401
from mutualat.attacks import boundary, elastic, fog, gabor  # noqa: F401
from mutualat.attacks import noise, pointwise, unforeseen  # noqa: F401
from mutualat.attacks.base import (
    ATTACKS,
    FAMILIES,
    Attack,
    BoundAttack,
    Example,
    attack_mode,
    create_attack,
    warn_if_zero_gradient,
)
from mutualat.attacks.apgd import APGD
from mutualat.attacks.cw import CarliniWagnerL2
from mutualat.attacks.ddn import DDN
from mutualat.attacks.deepfool import DeepFool
from mutualat.attacks.fgsm import FGSM
from mutualat.attacks.mim import MIM
from mutualat.attacks.msd import MSD
from mutualat.attacks.pgd import PGD
from mutualat.attacks.threat import Threat, ThreatModel, make_threat
from mutualat.registry import Registry

#: Attacks that wrap an optional package (AutoAttack, :mod:`mutualat.evaluation.autoattack`):
#: suites may name them, but they stay out of :data:`ATTACKS`, so code that builds every
#: registered attack never meets one whose package is missing.
OPTIONAL_ATTACKS: Registry = Registry("attack")

__all__ = [
    "APGD",
    "ATTACKS",
    "Attack",
    "BoundAttack",
    "CarliniWagnerL2",
    "DDN",
    "DeepFool",
    "Example",
    "FAMILIES",
    "FGSM",
    "MIM",
    "MSD",
    "OPTIONAL_ATTACKS",
    "PGD",
    "Threat",
    "ThreatModel",
    "attack_mode",
    "create_attack",
    "make_threat",
    "warn_if_zero_gradient",
]
