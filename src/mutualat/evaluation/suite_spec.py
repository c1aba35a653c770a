"""What an attack suite is once read: its threats (an lp :class:`~mutualat.attacks.threat.Threat`
or a :class:`Strength`), its attacks (:class:`AttackSpec`) and the :class:`Suite`, which builds
and checks each attack by its registered name.

:mod:`mutualat.evaluation.suite` reads suites from YAML files and mappings (and re-exports
these names); the file format is described there.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mutualat.attacks import ATTACKS, OPTIONAL_ATTACKS
from mutualat.attacks.threat import Threat
from mutualat.errors import ConfigError, FieldError
from mutualat.evaluation import autoattack  # noqa: F401  (registers itself in OPTIONAL_ATTACKS)
from mutualat.files import atomic_write_bytes


@dataclass(frozen=True)
class Strength:
    """The threat of attacks without an lp ball (Fog, Gabor, Elastic): their own strength
    ``eps``, a number, ``None`` (the attack's default) or ``"calibrated:28x28"`` (the value
    the attack's module lists in its ``CALIBRATED_EPS`` table for that input size)."""

    eps: float | str | None
    norm = None  # no ball

    def record(self) -> dict[str, Any]:
        return {"norm": None, "eps": self.eps}


@dataclass
class AttackSpec:
    id: str
    name: str  # a registered attack
    threat: str  # a key of Suite.threats
    restarts: int = 1
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "threat": self.threat,
                "restarts": self.restarts, "params": copy.deepcopy(self.params)}


@dataclass
class Suite:
    name: str
    threats: dict[str, Threat | Strength]  # threat name -> its ball or strength
    attacks: list[AttackSpec]
    description: str = ""
    per_attack: str = "cumulative"

    # --- queries -------------------------------------------------------------------

    def threat_of(self, spec: AttackSpec) -> Threat | Strength:
        return self.threats[spec.threat]

    def attack_ids(self) -> list[str]:
        return [a.id for a in self.attacks]

    def lp_threats(self) -> dict[str, Threat]:
        """name -> threat, of the threats with an lp ball."""
        return {k: t for k, t in self.threats.items() if isinstance(t, Threat)}

    def build(self, spec: AttackSpec):
        """The attack object of ``spec``: ``create_attack(name, norm, eps, **params)``."""
        threat = self.threat_of(spec)
        kwargs: dict[str, Any] = dict(spec.params)
        if threat.norm is not None:
            kwargs["norm"] = threat.norm
        if isinstance(threat.eps, str):
            kwargs["eps"] = _calibrated_eps(self.name, spec, threat.eps)
        elif threat.eps is not None:
            kwargs["eps"] = threat.eps
        try:
            attack = attack_factory(spec.name)(**kwargs)
        except TypeError as exc:  # an unexpected keyword of a factory without a signature
            raise ConfigError(f"suite {self.name!r}, attack {spec.id!r} ({spec.name}): {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"suite {self.name!r}, attack {spec.id!r} ({spec.name}): {exc}") from None
        norm = getattr(attack, "norm", None)
        if norm is not None and threat.norm is not None and norm != threat.norm:
            raise ConfigError(
                f"suite {self.name!r}, attack {spec.id!r}: {spec.name} attacks in {norm}, but its "
                f"threat {spec.threat!r} is {threat.norm}"
            )
        return attack

    def validate(self) -> "Suite":
        """Check every attack: a registered name, known parameters, valid values (each is
        built once; constructors are cheap). Raises :class:`ConfigError` naming the attack."""
        for spec in self.attacks:
            try:
                factory = attack_factory(spec.name)
            except ConfigError:
                raise ConfigError(
                    f"suite {self.name!r}: unknown attack {spec.name!r} (attack {spec.id!r}); "
                    f"known: {', '.join(known_attacks())}"
                ) from None
            _check_params(self.name, spec, factory)
            self.build(spec)
        return self

    # --- transforms ----------------------------------------------------------------

    def with_eps(self, eps: float) -> "Suite":
        """A copy whose single lp threat has radius ``eps`` (``--eps`` of the CLI)."""
        lp = self.lp_threats()
        if len(lp) != 1:
            raise ConfigError(
                f"suite {self.name!r} has {len(lp)} lp threat types "
                f"({', '.join(lp) or 'none'}); --eps needs exactly one"
            )
        return self.with_threat_eps(next(iter(lp)), eps)

    def with_threat_eps(self, threat: str, eps: float) -> "Suite":
        """A copy where threat ``threat`` has radius (or, without a norm, strength) ``eps``."""
        if threat not in self.threats:
            raise ConfigError(f"suite {self.name!r} has no threat {threat!r}; its threats: "
                              f"{', '.join(self.threats)}")
        new = copy.deepcopy(self)
        new.threats[threat] = threat_or_strength(f"suite {self.name!r}, threat {threat!r}",
                                                  self.threats[threat].norm, eps)
        return new

    def only(self, threat: str) -> "Suite":
        """A copy holding one threat type and its attacks (a point of an eps sweep)."""
        if threat not in self.threats:
            raise ConfigError(f"suite {self.name!r} has no threat {threat!r}; its threats: "
                              f"{', '.join(self.threats)}")
        new = copy.deepcopy(self)
        new.threats = {threat: new.threats[threat]}
        new.attacks = [a for a in new.attacks if a.threat == threat]
        return new

    # --- serialization -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "per_attack": self.per_attack,
            "threats": {k: t.record() for k, t in self.threats.items()},
            "attacks": [a.to_dict() for a in self.attacks],
        }

    def dump(self, path: str | os.PathLike | None = None) -> str:
        """The suite as YAML (written to ``path`` when given); :func:`load_suite` reads it back."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)
        if path is not None:
            atomic_write_bytes(Path(path), text.encode())
        return text


def attack_factory(name: str) -> Any:
    """The class or factory of attack ``name``: a registered attack, else an optional one."""
    if name in ATTACKS:
        return ATTACKS.get(name)
    return OPTIONAL_ATTACKS.get(name)


def _calibrated_eps(suite: str, spec: AttackSpec, value: str) -> float:
    """``"calibrated:<size>"`` -> ``CALIBRATED_EPS[<size>]`` of the attack's module."""
    import sys

    size = value.split(":", 1)[1]
    factory = attack_factory(spec.name)
    table = getattr(sys.modules.get(getattr(factory, "__module__", ""), None), "CALIBRATED_EPS", None)
    if not isinstance(table, dict) or size not in table:
        known = ", ".join(table) if isinstance(table, dict) else "none"
        raise ConfigError(
            f"suite {suite!r}, attack {spec.id!r}: {spec.name} has no calibrated eps for "
            f"{size!r} (its module's CALIBRATED_EPS sizes: {known})"
        )
    return float(table[size])


def known_attacks() -> list[str]:
    return sorted(set(ATTACKS.names()) | set(OPTIONAL_ATTACKS.names()))


def threat_or_strength(where: str, norm: str | None, eps: Any) -> Threat | Strength:
    """The ball ``norm``/``eps`` (validated by :class:`Threat`), or the strength ``eps`` of a
    threat without a norm (a finite number > 0, or None)."""
    if norm is not None:
        try:
            return Threat(norm, eps)
        except FieldError as exc:
            raise ConfigError(f"{where}: {exc.field} {exc.reason}") from None
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float))
                            or not math.isfinite(eps) or eps <= 0):
        raise ConfigError(f"{where}: eps must be a finite number > 0, got {eps!r}")
    return Strength(None if eps is None else float(eps))


def _check_params(suite: str, spec: AttackSpec, factory: Any) -> None:
    """Name an unknown parameter before building (a clearer message than a TypeError)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # a forwarding factory (e.g. apgd-ce): building it checks the names
    known = [k for k in params if k not in ("self", "norm", "eps")]
    for key in spec.params:
        if key not in params:
            raise ConfigError(
                f"suite {suite!r}, attack {spec.id!r}: {spec.name} has no parameter {key!r}; "
                f"its parameters: {', '.join(known)}"
            )
