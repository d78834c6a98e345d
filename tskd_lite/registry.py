"""A named registry: each strategy, keep rule or backend registers itself once, under the name a recipe uses.

The recipe checks names against the registry, so a new one is a class in its own module and nothing else: no list
of names to keep equal elsewhere. (Plugins from outside the repository could be loaded into the same registry from
`importlib.metadata.entry_points`; every extension lives here today, so none are.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tskd_lite.errors import TskdError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator: @REGISTRY.register("name") above a class (or call it with an instance)."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str, where: str) -> T:
        if name not in self._items:
            raise TskdError(f"{where}: expected {self.expected()}, got {name!r}")
        return self._items[name]

    def expected(self) -> str:
        return "one of " + ", ".join(repr(n) for n in self._items)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
