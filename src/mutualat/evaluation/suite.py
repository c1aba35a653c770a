"""Attack suites: which attacks, in which threat models, with which settings, in one YAML file.

A suite file::

    name: table5
    description: Maini et al.'s suite for linf/l2/l1 (MAT paper, Table 5)
    per_attack: cumulative          # or standalone (see below)
    threats:                        # or a single `threat: {norm: linf, eps: 0.031}`
      linf: {eps: 0.03}             # norm defaults to the key for linf, l2, l1
      l2: {eps: 0.5}
      fog: {norm: null, eps: "calibrated:32x32"}  # no lp ball: the attack's own strength
    attacks:
      - {id: pgd-100, name: pgd, threat: linf, restarts: 10, params: {steps: 100}}
      - {name: fgsm, threat: linf}  # id defaults to the attack's name

- ``threats``: an lp threat is a :class:`~mutualat.attacks.threat.Threat` (its ball; the
  attack's own settings are its ``params``); a threat with ``norm: null`` is a
  :class:`Strength`, the radius-like parameter of an attack without an lp ball.
- ``name`` of an attack is a registered attack (:data:`mutualat.attacks.ATTACKS`) or an
  optional one (:data:`mutualat.attacks.OPTIONAL_ATTACKS`: ``autoattack``); the attack is built as
  ``create_attack(name, norm=threat.norm, eps=threat.eps, **params)``, so ``params`` never
  holds ``norm`` or ``eps`` (a threat without norm passes only its eps, if it has one).
- ``id`` names the attack instance (a column of every table, a file name): unique, made of
  letters, digits and ``._+-``.
- ``restarts``: the evaluator runs the attack that many times; an example is broken if any
  run breaks it, and later runs only attack the examples still robust.
- ``per_attack`` chooses what the per-attack numbers mean. ``cumulative`` (default): every
  attack only runs on the examples still robust against the earlier attacks *of its threat
  type*, and its column is the accuracy against the attacks of its type up to it (exact,
  AutoAttack's "robust accuracy after X"). ``standalone``: every attack runs on every
  clean-correct example, and its column is the accuracy under it alone (as the paper's
  Tables 2 and 3). Per-type accuracies, R_avg and R_worst are exact in both modes.

:func:`load_suite` takes a packaged suite's name (``quick``, ``table2``, ...; see
:func:`packaged_suites`) or a file path, checks every attack by building it, and returns a
:class:`Suite`; :meth:`Suite.dump` writes YAML that loads back to an equal suite. The
suite's parts (:class:`Suite`, :class:`AttackSpec`, :class:`Strength`) are defined in
:mod:`mutualat.evaluation.suite_spec` and importable from here.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from pathlib import Path
from typing import Any

import yaml

from mutualat.attacks.threat import NORMS, Threat
from mutualat.config import read_yaml
from mutualat.errors import ConfigError
from mutualat.evaluation.suite_spec import (  # noqa: F401  (re-exported)
    AttackSpec, Strength, Suite, attack_factory, known_attacks, threat_or_strength,
)

PER_ATTACK_MODES = ("cumulative", "standalone")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SUITE_KEYS = ("name", "description", "per_attack", "threat", "threats", "attacks")
_THREAT_KEYS = ("norm", "eps")
_ATTACK_KEYS = ("id", "name", "threat", "restarts", "params")


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _unknown(where: str, data: dict, known: tuple[str, ...]) -> None:
    extra = [k for k in data if k not in known]
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r}; known keys: {', '.join(known)}")


def _parse_threat(suite: str, name: Any, data: Any) -> Threat | Strength:
    where = f"suite {suite!r}, threat {name!r}"
    if not isinstance(name, str) or not _ID.match(name):
        raise ConfigError(f"suite {suite!r}: threat names are letters, digits and ._+-; got {name!r}")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping like {{eps: 0.03}}, got {data!r}")
    _unknown(where, data, _THREAT_KEYS)
    if "norm" in data:
        norm = data["norm"]
    elif name in NORMS:
        norm = name
    else:
        raise ConfigError(
            f"{where}: say its norm (linf, l2, l1, or null for attacks without an lp ball); "
            "only threats named linf, l2 or l1 take it from their name"
        )
    if norm is not None and norm not in NORMS:
        raise ConfigError(f"{where}: norm must be one of {', '.join(NORMS)} or null, got {norm!r}")
    eps = data.get("eps")
    if norm is not None and eps is None:
        raise ConfigError(f"{where}: an {norm} threat needs eps")
    if isinstance(eps, str):
        if norm is not None or not eps.startswith("calibrated:"):
            raise ConfigError(
                f"{where}: eps must be a number (or \"calibrated:<size>\" for a threat "
                f"without norm), got {eps!r}"
            )
        return Strength(eps)
    return threat_or_strength(where, norm, eps)


def _parse_attack(suite: str, index: int, data: Any, threats: dict[str, Threat]) -> AttackSpec:
    where = f"suite {suite!r}, attack {index + 1}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping like {{name: pgd, threat: linf}}, got {data!r}")
    _unknown(where, data, _ATTACK_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: needs the name of a registered attack")
    attack_id = data.get("id", name)
    if not isinstance(attack_id, str) or not _ID.match(attack_id):
        raise ConfigError(f"{where} ({name}): id must be letters, digits and ._+-, got {attack_id!r}")
    where = f"suite {suite!r}, attack {attack_id!r}"
    if "threat" in data:
        threat = data["threat"]
    elif len(threats) == 1:
        threat = next(iter(threats))
    else:
        raise ConfigError(f"{where}: say its threat, one of {', '.join(threats)}")
    if threat not in threats:
        raise ConfigError(f"{where}: unknown threat {threat!r}; the suite defines {', '.join(threats)}")
    restarts = data.get("restarts", 1)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ConfigError(f"{where}: restarts must be an integer >= 1, got {restarts!r}")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: params must be a mapping, got {params!r}")
    for reserved in ("norm", "eps"):
        if reserved in params:
            raise ConfigError(
                f"{where}: params may not set {reserved!r}; it comes from the threat "
                f"{threat!r} (give the attack its own threat to change it)"
            )
    return AttackSpec(attack_id, name, threat, restarts, dict(params))


def suite_from_dict(data: Any, source: str = "<dict>") -> Suite:
    """Parse (but do not validate against the attack registry) a suite mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a suite file is a mapping with name, threats and attacks")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: the suite needs a name")
    _unknown(f"suite {name!r}", data, _SUITE_KEYS)
    if ("threat" in data) == ("threats" in data):
        raise ConfigError(f"suite {name!r}: give either `threat:` (one) or `threats:` (several)")
    if "threat" in data:
        one = data["threat"]
        if not isinstance(one, dict):
            raise ConfigError(f"suite {name!r}: threat must be a mapping like {{norm: linf, eps: 0.03}}")
        tname = one.get("norm") or "threat"
        raw_threats = {tname: one}
    else:
        raw_threats = data["threats"]
        if not isinstance(raw_threats, dict) or not raw_threats:
            raise ConfigError(f"suite {name!r}: threats must be a non-empty mapping")
    threats = {k: _parse_threat(name, k, v) for k, v in raw_threats.items()}
    raw_attacks = data.get("attacks")
    if not isinstance(raw_attacks, list) or not raw_attacks:
        raise ConfigError(f"suite {name!r}: attacks must be a non-empty list")
    attacks = [_parse_attack(name, i, a, threats) for i, a in enumerate(raw_attacks)]
    seen: set[str] = set()
    for a in attacks:
        if a.id in seen:
            raise ConfigError(
                f"suite {name!r}: two attacks have the id {a.id!r}; give each an `id:` of its own"
            )
        seen.add(a.id)
    unused = [t for t in threats if not any(a.threat == t for a in attacks)]
    if unused:
        raise ConfigError(f"suite {name!r}: threat {unused[0]!r} has no attack")
    per_attack = data.get("per_attack", "cumulative")
    if per_attack not in PER_ATTACK_MODES:
        raise ConfigError(
            f"suite {name!r}: per_attack must be one of {', '.join(PER_ATTACK_MODES)}, got {per_attack!r}"
        )
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"suite {name!r}: description must be text")
    return Suite(name, threats, attacks, description.strip(), per_attack)


def packaged_suites() -> list[str]:
    """Names of the suites shipped in ``mutualat/suites/``."""
    folder = importlib.resources.files("mutualat") / "suites"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str | os.PathLike, validate: bool = True) -> Suite:
    """Load a suite by packaged name (``"quick"``) or from a YAML file; validated by default."""
    path = Path(name_or_path)
    text: str
    if path.is_file():
        text, source = path.read_text(), str(path)
    elif path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise ConfigError(f"no suite file at {path}")
    else:
        resource = importlib.resources.files("mutualat") / "suites" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(
                f"unknown suite {str(name_or_path)!r}: neither a file nor a packaged suite; "
                f"packaged: {', '.join(packaged_suites())}"
            )
        text, source = resource.read_text(), f"packaged suite {name_or_path}"
    try:
        data = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    suite = suite_from_dict(data, source)
    return suite.validate() if validate else suite


