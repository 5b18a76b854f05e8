"""Small files: atomic writes, and JSON read with errors that name the file.

Every file a run writes goes through :func:`atomic_path` (or the helpers on top of it), so a
run killed while writing leaves the previous file, or none, and never half of one.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
from collections.abc import Iterator, Mapping
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    The temporary file is created empty (with the permissions a new file gets; those of
    ``path`` when it exists) for the block to write; on an error it is removed and ``path``
    is left as it was.

    Args:
        path: The file to write.
        durable: Also flush the file and the rename to disk (for files that must survive
            a power loss, such as manifests).

    Yields:
        The temporary path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
        try:
            os.close(os.open(temporary, flags, 0o666))
            break
        except FileExistsError:
            continue
    try:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)
        yield temporary
        if durable:
            fsync_path(temporary)
        os.replace(temporary, path)
        if durable:
            fsync_path(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes a file, or a folder's entries, to disk (best effort: some systems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def plain_json(value: Any) -> Any:
    """Strict JSON values of ``value``.

    Non-finite numbers become None; numpy and torch values, tuples and paths plain Python
    (arrays nested lists); mapping keys strings; anything else its ``str``.
    """
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    if hasattr(value, "tolist") and hasattr(value, "ndim"):
        return plain_json(value.tolist())
    return str(value)


def write_json(
    path: str | os.PathLike, values: Any, indent: int | None = 1, sort_keys: bool = False
) -> None:
    """Writes ``values`` as strict JSON (:func:`plain_json`) to ``path``, atomically."""
    text = json.dumps(plain_json(values), indent=indent, allow_nan=False, sort_keys=sort_keys)
    write_text_atomic(path, text + "\n")
