"""One registry type for everything that plugs in by name: methods, finetuning schemes, attacks.

A registry maps lowercase names to classes (or factories) with optional metadata; entries come
from the package's built-in modules (imported on first use), from the entry-point group of the
registry, and from user modules loaded explicitly (``acbench --plugin my_pkg.my_module``)::

    SCHEMES = Registry("scheme", builtins=("benchmark.schemes.slf",), entry_points="acbench.schemes")

    @SCHEMES.register("slf", label="SLF", order=0)
    class StandardLinear(Scheme): ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from benchmark.errors import AcbenchError, unknown

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(
        self,
        kind: str,
        builtins: tuple[str, ...] = (),
        entry_points: str | None = None,
        check: Callable[[Any], None] | None = None,
    ) -> None:
        self.kind = kind
        self._builtins = builtins
        self._group = entry_points
        self._check = check
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._loaded = False

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (lowercase, unique) with ``meta``."""

        def deco(obj: T) -> T:
            if not name or name != name.lower():
                raise ValueError(f"{self.kind} names are lowercase and non-empty, got {name!r}")
            if name in self._items and self._items[name] is not obj:
                owner = getattr(self._items[name], "__module__", "?")
                raise ValueError(f"{self.kind} {name!r} is already registered (by {owner}); choose another name")
            if self._check is not None:
                self._check(obj)
            self._items[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and interactive sessions that re-register a plugin)."""
        self._items.pop(name, None)
        self._meta.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtins:
            importlib.import_module(module)
        if self._group:
            for ep in entry_points(group=self._group):
                ep.load()

    def load_plugin(self, module: str) -> None:
        """Import a user module that registers entries."""
        self._load()
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            raise AcbenchError(f"cannot import plugin module {module!r}: {e}") from None

    def names(self) -> list[str]:
        self._load()
        return list(self._items)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise unknown(self.kind, name, self._items) from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
