"""Reading the loose audio files named on a command line, recording the unreadable ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qamdt.audio_io import load_audio
from qamdt.errors import QamdtError


def load_loose_files(
    paths: list[Path],
) -> tuple[dict[str, dict[str, str]], list[np.ndarray], list[int], list[str]]:
    """Loads each file; a file that cannot be used is reported instead of stopping the run.

    Returns:
        ``(errors, waves, rates, names)``: ``errors`` maps an unreadable path to
        ``{"error": reason}``; the other three list the readable files in order.
    """
    errors, waves, rates, names = {}, [], [], []
    for path in paths:
        try:
            wave, rate = load_audio(path)
        except QamdtError as error:
            errors[str(path)] = {"error": str(error)}
            continue
        waves.append(wave)
        rates.append(rate)
        names.append(str(path))
    return errors, waves, rates, names
