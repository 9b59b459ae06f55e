"""Names the user typed (models, datasets, recipe keys): lookups with spelling suggestions, checked options."""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

Factory = TypeVar("Factory", bound=Callable)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def look_up(registry: Mapping[str, Callable], name: str, kind: str, lister: str) -> Callable:
    """``registry[name]``, or a ``ValueError`` with suggestions and every registered name."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}{did_you_mean(name, registry)}; registered: "
                         f"{', '.join(sorted(registry))} (`{lister}` lists them)")
    return registry[name]


def describe(registry: Mapping[str, Callable]) -> list[tuple[str, str]]:
    """``(name, the first line of its factory's docstring)`` for every registered name, sorted."""
    return [(n, (inspect.getdoc(registry[n]) or "").splitlines()[0] if inspect.getdoc(registry[n]) else "")
            for n in sorted(registry)]


class Registry(Generic[Factory]):
    """Recipe names -> factories, filled by the ``register(name)`` decorator; looked up with suggestions.

    ``kind`` names what it holds in messages ("model"), ``lister`` the command that lists them.  A factory may
    own a recipe section: ``register(name, config=SomeConfig)`` records the pydantic model of the section named
    ``name`` (:mod:`reidkit.sections` assembles the recipe schema from them)."""

    def __init__(self, kind: str, lister: str):
        self.kind, self.lister = kind, lister
        self.factories: dict[str, Factory] = {}
        self.configs: dict[str, type] = {}
        self.order: dict[str, int] = {}

    def register(self, name: str, config: type | None = None, order: int = 100) -> Callable[[Factory], Factory]:
        """Register a factory under ``name`` (with its recipe section's ``config`` class; ``order``: where it
        comes among the others, lower first, then by name)."""
        if not name.isidentifier():
            raise ValueError(f"{self.kind} name {name!r} must be a Python identifier (it names a recipe section)")

        def add(factory: Factory) -> Factory:
            if name in self.factories and self.factories[name] is not factory:
                raise ValueError(f"{self.kind} name {name!r} is registered twice "
                                 f"({self.factories[name].__module__} and {factory.__module__})")
            self.factories[name] = factory
            self.order[name] = order
            if config is not None:
                self.configs[name] = config
            return factory
        return add

    def unregister(self, name: str) -> None:
        """Forget ``name`` (tests that register their own pieces clean up with this)."""
        for table in (self.factories, self.configs, self.order):
            table.pop(name, None)

    def ordered(self) -> list[str]:
        """Every name, by ``order`` then by name."""
        return sorted(self.factories, key=lambda n: (self.order.get(n, 100), n))

    def __contains__(self, name: str) -> bool:
        return name in self.factories

    def __getitem__(self, name: str) -> Factory:
        """The factory of ``name``, or a ``ValueError`` with suggestions and every registered name."""
        look_up(self.factories, name, self.kind, self.lister)
        return self.factories[name]

    def names(self) -> list[str]:
        return sorted(self.factories)

    def describe(self) -> list[tuple[str, str]]:
        return describe(self.factories)


def check_keywords(factory: Callable, given: Iterable[str], what: str, positional: str) -> None:
    """A ``ValueError`` naming the keywords of ``given`` that ``factory`` does not take (``positional``, the
    argument the caller passes itself, does not count); a factory with ``**kwargs`` takes all."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in given if k not in params or k == positional]
    if unknown:
        takes = ", ".join(k for k in params if k != positional) or "nothing"
        raise ValueError(f"{what} does not take {', '.join(unknown)} (it takes: {takes})")


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 query"``, ``"2 queries"``: ``n`` and the noun in the right number (``plural``: when not noun + s)."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
