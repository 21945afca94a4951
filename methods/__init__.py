"""The method registry.

A method is a subclass of :class:`methods.base.Method` registered under a lowercase name::

    from methods import register_method
    from methods.base import Method

    @register_method("my-acl")
    class MyACL(Method):
        ...

Methods load from this package, from a user module (``acbench --plugin my_pkg.my_method``) and from
the entry-point group ``acbench.methods``.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from methods.base import Method, Recipe

_REGISTRY: dict[str, type[Method]] = {}
_BUILTINS = ("methods.simclr", "methods.acl", "methods.rocl", "methods.advcl")
_loaded = False


class UnknownMethod(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


def register_method(name: str):
    """Class decorator registering a :class:`Method` subclass under ``name`` (lowercase, unique)."""

    def deco(cls: type[Method]) -> type[Method]:
        if name != name.lower() or not name:
            raise ValueError(f"method names are lowercase and non-empty, got {name!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"method {name!r} is already registered (by {_REGISTRY[name].__module__}); "
                "choose another name"
            )
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"{cls!r} must subclass methods.base.Method")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTINS:
        importlib.import_module(mod)
    for ep in entry_points(group="acbench.methods"):
        ep.load()


def load_plugin(module: str) -> None:
    """Import a user module that registers methods (``--plugin my_pkg.my_method``)."""
    _load_builtins()
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ImportError(f"cannot import plugin module {module!r}: {e}") from None


def list_methods() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownMethod(
            f"unknown method {name!r}{hint}; registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def get_method(name: str, **overrides: Any) -> Method:
    """An instance of method ``name`` with its default parameters updated by ``overrides``."""
    return method_class(name)(**overrides)


__all__ = [
    "Method",
    "Recipe",
    "UnknownMethod",
    "get_method",
    "list_methods",
    "load_plugin",
    "method_class",
    "register_method",
]
