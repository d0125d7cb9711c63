"""Name-to-class registries used by YAML specs and the CLI.

The Python API takes instances; names are only looked up when a spec or a command
line names a method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """A small registry of named implementations of one base class.

    Parameters
    ----------
    kind : str
        What the entries are, used in error messages ("data set", "model family").
    base : type or None, default=None
        Entries must subclass it; ``None`` accepts any object (e.g. loader functions).
    """

    def __init__(self, kind: str, base: type | None = None) -> None:
        self._kind = kind
        self._base = base
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if self._base is not None and not (isinstance(item, type) and issubclass(item, self._base)):
                raise TypeError(f"A {self._kind} must be a subclass of {self._base.__name__}; got {item!r}.")
            if name in self._items:
                raise ValueError(f"{self._kind.capitalize()} {name!r} is already registered.")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"Unknown {self._kind} {name!r}. Known: {sorted(self._items)}.")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)
