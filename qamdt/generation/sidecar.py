"""The JSON sidecar beside each generated file: its one writer and its one reader.

A sidecar holds the prompt (without the quality prefix), the text the model saw, every
generation setting of the call under its :class:`~qamdt.generation.settings.GenerationSettings`
name (``seed`` is the seed of the file's batch), and per-file facts: ``batch_index``,
``rank`` and ``clap_score`` (with CLAP re-ranking), ``sample_rate``, ``model`` (the
pipeline folder), the mode (``mode``; beyond a plain clip also ``windows``, and with an
input audio ``input_audio``, ``input_sha256``, ``input_seconds``; see
:mod:`qamdt.generation.modes`), plus what the caller adds (the demo's ``reference_id``).

``steps`` repeats ``num_inference_steps`` under the name sidecars used before it; files
with only ``steps``, and hand-written sidecars with just ``prompt``, ``quality_level`` and
``seed`` (what ``qamdt evaluate`` needs), read as well.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qamdt.errors import ConfigError, QamdtError
from qamdt.generation.settings import SETTING_NAMES, GenerationSettings, SettingsError
from qamdt.json_files import write_json

LEGACY_NAMES = {"steps": "num_inference_steps"}
"""Old sidecar key -> setting, read when the setting's own key is absent."""


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """One sidecar, read.

    Attributes:
        prompt: The prompt, without the quality prefix.
        settings: The generation settings (defaults for what the file does not say).
        fields: Everything in the file, as read.
    """

    prompt: str
    settings: GenerationSettings
    fields: dict[str, Any]

    @property
    def text(self) -> str | None:
        """The text the model was conditioned on, when recorded."""
        return self.fields.get("text")

    @property
    def mode(self) -> str:
        """The generation mode ("text" for a plain clip and for files without the field)."""
        mode = self.fields.get("mode")
        return mode if isinstance(mode, str) and mode else "text"

    @property
    def input_audio(self) -> str | None:
        """The input audio file of an editing mode, when recorded."""
        path = self.fields.get("input_audio")
        return path if isinstance(path, str) else None

    @property
    def reference_id(self) -> str | None:
        """The reference clip the file was generated for, when recorded."""
        key = self.fields.get("reference_id")
        return str(key) if isinstance(key, (str, int)) and str(key) else None


def write_sidecar(
    path: str | os.PathLike,
    settings: GenerationSettings,
    prompt: str,
    text: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Writes a sidecar.

    Args:
        path: The ``.json`` file.
        settings: The call's settings, with ``seed`` set to the file's batch seed.
        prompt: The prompt, without the quality prefix.
        text: The text the model saw.
        extra: Per-file fields (``batch_index``, ``sample_rate``, ``model``, ...); they
            may not reuse a setting's name.

    Raises:
        ValueError: If ``extra`` holds a setting's name.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & {*SETTING_NAMES, *LEGACY_NAMES, "prompt", "text"})
    if clash:
        raise ValueError(f"extra: {clash} are sidecar fields of their own")
    values = {"prompt": prompt, "text": text, **settings.to_dict()}
    values["steps"] = settings.num_inference_steps
    values.update(extra)
    write_json(path, values)


def read_sidecar(path: str | os.PathLike) -> Sidecar:
    """Reads and checks a sidecar.

    Raises:
        QamdtError: Naming the file, and the field when one is bad.
    """
    path = Path(path)
    if not path.is_file():
        raise QamdtError(f"{path}: sidecar missing")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QamdtError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise QamdtError(f"{path}: expected a JSON object")
    prompt = values.get("prompt")
    if not isinstance(prompt, str):
        raise QamdtError(f"{path}: field 'prompt' must be a string")
    chosen = {k: v for k, v in values.items() if k in SETTING_NAMES}
    for old, new in LEGACY_NAMES.items():
        if old in values and new not in chosen:
            chosen[new] = values[old]
    try:
        settings = GenerationSettings(**chosen)
    except SettingsError as error:
        raise QamdtError(f"{path}: field '{error.field}' {error.reason}") from None
    except ConfigError as error:
        raise QamdtError(f"{path}: {error}") from None
    return Sidecar(prompt, settings, values)
