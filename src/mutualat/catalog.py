"""What is registered, with each entry's options and defaults: ``mutualat list KIND``.

Every entry is read from the registries themselves (the builder's signature, the method's
``Params`` dataclass, the suite file), so the listing cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from mutualat.data import DATASETS
from mutualat.errors import ConfigError
from mutualat.evaluation.suite import attack_factory, known_attacks, load_suite, packaged_suites
from mutualat.methods import METHODS
from mutualat.models import MODELS, SOURCES, model_options


@dataclass
class Entry:
    name: str
    summary: str  # one line: what it is, and the paper where there is one
    options: dict[str, Any] = field(default_factory=dict)  # option -> default
    facts: dict[str, Any] = field(default_factory=dict)  # other defaults worth knowing

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Where a docstring's first sentence ends: a full stop and a space, not after an
#: abbreviation ("Liu et al. 2021", "e.g. PGD", "Fig. 2"; "etc." is taken to go on).
_ABBREVIATIONS = ("al", "e.g", "i.e", "vs", "cf", "etc", "sec", "fig", "eq", "approx", "resp")
_SENTENCE_END = re.compile("".join(rf"(?<!\b{re.escape(a)})" for a in _ABBREVIATIONS) + r"\.\s+",
                           re.IGNORECASE)


def _first_line(*objects: Any) -> str:
    """The first sentence of the first docstring among ``objects`` (the builder, its class,
    its module), so that an entry without its own docstring still says what it is. A class's
    own docstring only: an inherited one would describe the base class."""
    for obj in objects:
        doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
        if doc:
            paragraph = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
            return _SENTENCE_END.split(paragraph, maxsplit=1)[0].rstrip(".")
    return ""


def _defaults(fn: Callable[..., Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: (None if p.default is p.empty else p.default)
            for p in params if p.kind in kinds and p.name not in ("self",) + skip}


def models() -> list[Entry]:
    entries = []
    for name in MODELS.names():
        builder = MODELS.get(name)
        # The rate and decay a run gets unless it sets models.N.lr / weight_decay; None
        # where the architecture declares none (the run must then set it).
        declared = MODELS.declared(name)
        facts = {"lr": declared.get("lr"), "weight_decay": declared.get("weight_decay")}
        summary = _first_line(builder, sys.modules.get(builder.__module__))
        entries.append(Entry(name, summary, model_options(name), facts))
    return entries


def methods() -> list[Entry]:
    entries = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        params = {}
        for f in dataclasses.fields(cls.Params):
            if f.default is not dataclasses.MISSING:
                params[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                params[f.name] = f.default_factory()
        entries.append(Entry(name, _first_line(cls, sys.modules.get(cls.__module__)), params))
    return entries


def attacks() -> list[Entry]:
    entries = []
    for name in known_attacks():
        factory = attack_factory(name)
        options = _defaults(factory)
        entries.append(Entry(name, _first_line(factory, sys.modules.get(factory.__module__)), options))
    return entries


def suites() -> list[Entry]:
    entries = []
    for name in packaged_suites():
        suite = load_suite(name, validate=False)
        threats = {k: (f"{t.norm} eps={t.eps}" if t.norm else f"eps={t.eps}")
                   for k, t in suite.threats.items()}
        entries.append(Entry(name, suite.description.splitlines()[0] if suite.description else "",
                             {}, {"threats": threats, "attacks": suite.attack_ids(),
                                  "per_attack": suite.per_attack}))
    return entries


def datasets() -> list[Entry]:
    # Every dataset takes the same two settings (data.data_dir / --data-dir and data.path).
    where = {"data_dir": "--data-dir, else $MUTUALAT_DATA, else ~/.cache/mutualat", "path": None}
    return [Entry(name, _first_line(DATASETS.get(name)), dict(where)) for name in DATASETS.names()]


def sources() -> list[Entry]:
    return [Entry(f"{name}:", SOURCES.get(name).describe) for name in SOURCES.names()]


KINDS: dict[str, Callable[[], list[Entry]]] = {
    "models": models, "methods": methods, "attacks": attacks, "suites": suites,
    "datasets": datasets, "sources": sources,
}


def catalog(kind: str) -> list[Entry]:
    """The entries of one kind (:data:`KINDS`); an unknown kind lists the known ones."""
    if kind not in KINDS:
        raise ConfigError(f"unknown list {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind]()


def format_entries(entries: list[Entry]) -> str:
    """Plain text, one block per entry: its name and summary, then its options as
    ``key=default`` and its other facts."""
    lines = []
    for e in entries:
        lines.append(f"{e.name}" + (f"  {e.summary}" if e.summary else ""))
        if e.options:
            lines.append("    options: " + ", ".join(f"{k}={_show(v)}" for k, v in e.options.items()))
        for key, value in e.facts.items():
            lines.append(f"    {key}: {_show(value)}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return "(" + " ".join(f"{k}={_show(v)}" for k, v in dataclasses.asdict(value).items()) + ")"
    if isinstance(value, dict):
        return ", ".join(f"{k} ({_show(v)})" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_show, value)) if value else "[]"
    return "null" if value is None else str(value)
