"""Reading small JSON settings files with errors that name the file."""

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
