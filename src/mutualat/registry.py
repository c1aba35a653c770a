"""Name -> factory registries (models, attacks, methods, datasets).

Register with a decorator, build by name; an unknown name is a :class:`ConfigError` that lists
the known ones. Adding a model, attack or method is one new file plus its decorator line.

A registry may let its entries declare facts beside the factory, at the registration line,
instead of in a side table keyed by name that a new entry can be forgotten in::

    MODELS = Registry("model", declares=("lr", "weight_decay"))

    @MODELS.register("resnet18", lr=0.01, weight_decay=3.5e-3)
    def resnet18(...): ...

    MODELS.declared("resnet18")  # {"lr": 0.01, "weight_decay": 0.0035}

What each fact means, and what an entry that leaves one out gets, is the registry owner's
rule (see ``MODELS`` in :mod:`mutualat.models.factory`, ``ATTACKS`` in
:mod:`mutualat.attacks.base`).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from mutualat.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, declares: tuple[str, ...] = ()) -> None:
        """``kind`` words the errors ("unknown model ..."); ``declares`` names the facts an
        entry may declare at registration."""
        self.kind = kind
        self.declares = tuple(declares)
        self._entries: dict[str, T] = {}
        self._declared: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **declared: Any) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("resnet18", lr=0.01, weight_decay=3.5e-3)`` above a
        class or factory function; the keywords are the entry's declared facts."""
        unknown = sorted(set(declared) - set(self.declares))
        if unknown:
            may = ", ".join(self.declares) or "nothing"
            raise ValueError(f"{self.kind} {name!r} declares {', '.join(map(repr, unknown))}; "
                             f"a {self.kind} may declare: {may}")

        def wrap(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            self._declared[name] = dict(declared)
            return obj

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def declared(self, name: str) -> dict[str, Any]:
        """The facts entry ``name`` declared at registration (a copy; only those it gave).
        :class:`ConfigError` for an unknown name, as :meth:`get`."""
        self.get(name)
        return dict(self._declared.get(name, {}))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
