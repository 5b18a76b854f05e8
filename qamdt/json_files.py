"""Reading and writing small JSON files: errors that name the file, writes that are atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qamdt.errors import ConfigError


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when the file does not exist.

    Raises:
        ConfigError: If the file cannot be read, is not JSON, or holds no object.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return values


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename.

    A run killed while writing leaves the previous file (or none), never half of one.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, values: Any, indent: int | None = 1) -> None:
    """Writes ``values`` as JSON to ``path``, atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(values, indent=indent))
