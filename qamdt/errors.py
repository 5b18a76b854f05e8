"""Exceptions that name the file, line or field a problem came from."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any


class QamdtError(Exception):
    """Base class of the project's user-facing errors."""


class AudioError(QamdtError, ValueError):
    """An audio file that cannot be used, with the file named in the message.

    Args:
        path: The offending file (or a label such as ``"<array>"`` for in-memory audio).
        reason: What is wrong with it.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        where = self.path if self.path is not None else "<array>"
        super().__init__(f"{where}: {reason}")


class ManifestError(QamdtError, ValueError):
    """A manifest row or field that fails validation.

    Args:
        path: The manifest file, when known.
        line: 1-based line number in that file, when known.
        field: The field at fault, when one is.
        reason: What is wrong.
    """

    def __init__(
        self,
        reason: str,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.field = field
        self.reason = reason
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)


class ConfigError(QamdtError, ValueError):
    """A configuration with an unknown key or an invalid value, naming the key."""


class CheckpointError(QamdtError, ValueError):
    """A weight file that is missing, unreadable or does not fit the model."""


def did_you_mean(key: Any, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``key``, or ``""``."""
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_keys_error(
    unknown: Iterable[Any], known: Iterable[str], where: str, noun: str = "key"
) -> ConfigError:
    """The error for settings nobody defines: each unknown key with its closest known one."""
    known = sorted(known)
    named = ", ".join(f"'{key}'{did_you_mean(key, known)}" for key in unknown)
    return ConfigError(f"{where}: unknown {noun}(s) {named}; known: {known}")


def check_known_keys(
    values: Mapping[str, Any], target: type, where: str, noun: str = "key"
) -> None:
    """Raises ``ConfigError`` naming the keys of ``values`` that ``target`` has no field for.

    Args:
        values: Settings read from a file or the command line.
        target: The dataclass they are meant for.
        where: What holds them (a file name, a section), for the message.
        noun: What a key is called in the message ("unknown <noun>(s) [...]").
    """
    known = {field.name for field in dataclasses.fields(target)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise unknown_keys_error(unknown, known, where, noun)


def dataclass_from_dict(
    target: type,
    values: Mapping[str, Any],
    where: str,
    ignore: Iterable[str] = (),
    noun: str = "key",
):
    """``target(**values)`` after dropping ``ignore`` keys and rejecting unknown ones."""
    skipped = set(ignore)
    values = {k: v for k, v in values.items() if k not in skipped}
    check_known_keys(values, target, where, noun)
    return target(**values)
