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

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from benchmark.errors import UnknownName
from benchmark.registry import Registry
from methods.base import Method, Recipe

M = TypeVar("M", bound=Method)

UnknownMethod = UnknownName  # an unknown method name (also a KeyError)


def _check_method(cls: Any) -> None:
    """Only complete :class:`Method` subclasses register (an incomplete one fails here, not later)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r} must subclass methods.base.Method")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise TypeError(f"{cls.__qualname__} does not implement {missing}")


METHODS: Registry[type[Method]] = Registry(
    "method",
    builtins=("methods.simclr", "methods.acl", "methods.rocl", "methods.advcl", "methods.deacl",
              "methods.dynacl", "methods.air", "methods.plusplus", "methods.rcs"),
    entry_points="acbench.methods",
    check=_check_method,
)


def register_method(name: str, **meta: Any) -> Callable[[type[M]], type[M]]:
    """Class decorator registering a :class:`Method` subclass under ``name`` (lowercase, unique);
    the class's ``name`` becomes ``name``."""

    def deco(cls: type[M]) -> type[M]:
        METHODS.register(name, **meta)(cls)
        cls.name = name
        return cls

    return deco


def load_plugin(module: str) -> None:
    """Import a user module that registers methods (``--plugin my_pkg.my_method``)."""
    METHODS.load_plugin(module)


def list_methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(METHODS.names())


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; :data:`UnknownMethod` (with a did-you-mean) otherwise."""
    return METHODS.get(name)


def get_method(name: str, **overrides: Any) -> Method:
    """An instance of method ``name`` with its default parameters updated by ``overrides``."""
    return method_class(name)(**overrides)


__all__ = [
    "METHODS",
    "Method",
    "Recipe",
    "UnknownMethod",
    "get_method",
    "list_methods",
    "load_plugin",
    "method_class",
    "register_method",
]
