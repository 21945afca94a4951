"""acbench's error types.

:class:`AcbenchError` is an error the user can fix (a bad name, a missing file, an invalid
option): the CLI prints its message on one line and exits 1. Anything else is a bug and keeps its
traceback (always under ``acbench --debug``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AcbenchError(Exception):
    """An error the user can fix; its message names the problem."""

    def __str__(self) -> str:  # KeyError-style subclasses would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(AcbenchError, ValueError):
    """An invalid option, parameter or file content, found before anything is written."""


class UnknownName(AcbenchError, KeyError):
    """A name that no registry (method, scheme, attack, preset, dataset, ...) knows."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, value: str, choices: Iterable[str]) -> UnknownName:
    """The error for an unknown ``kind`` named ``value``, with a hint and the valid choices."""
    choices = list(choices)
    return UnknownName(
        f"unknown {kind} {value!r}{did_you_mean(value, choices)}; choose from {', '.join(choices)}"
    )


def check_choice(kind: str, value: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``, else :func:`unknown`'s error."""
    choices = list(choices)
    if value not in choices:
        raise unknown(kind, value, choices)
    return value
