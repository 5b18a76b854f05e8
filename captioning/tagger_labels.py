"""Labels of the ``embedded`` captioner's heads from a clip's ``meta.tags``.

Ensemble words become *patterns* with the instrument names cut out ("solo violin" ->
"solo {}"), so rare combinations share one class and a sentence never names an instrument
the instrument head did not predict.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from captioning.tagger_model import CLASS_FIELDS, EmbeddedCaptionerConfig
from captioning.tags import INSTRUMENTS, mode_class, tags_from_meta

PLACEHOLDER = "{}"


def ensemble_pattern(ensemble: str, instruments: Sequence[str]) -> str:
    """The ensemble words with each of its instrument names replaced by ``{}``.

    Example: ``ensemble_pattern("flute and violin in unison", ["flute", "violin"])`` is
    ``"{} and {} in unison"``; ``"string quartet"`` and ``"pipe organ"`` stay as they are.
    """
    text = str(ensemble).strip().lower()
    for name in sorted({str(i).lower() for i in instruments}, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", PLACEHOLDER, text)
    return text


def build_vocab(meta_tags: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Label names of every head from the training clips' ``meta.tags``.

    Instruments follow the canonical score order of ``captioning.tags.INSTRUMENTS`` (names
    it does not know go last, sorted); other heads list their values by falling frequency,
    ties by name.
    """
    counters = {head: Counter() for head in ("instruments", *CLASS_FIELDS)}
    for tags in meta_tags:
        labels = clip_labels(tags)
        counters["instruments"].update(labels["instruments"])
        for head in CLASS_FIELDS:
            if labels[head] is not None:
                counters[head][labels[head]] += 1
    order = {name: i for i, name in enumerate(INSTRUMENTS)}
    vocab = {
        "instruments": sorted(counters["instruments"], key=lambda n: (order.get(n, len(order)), n))
    }
    for head in CLASS_FIELDS:
        vocab[head] = sorted(counters[head], key=lambda v: (-counters[head][v], v))
    return vocab


def clip_labels(tags: Mapping[str, Any]) -> dict[str, Any]:
    """Every head's label of one clip (``None`` where the tags do not say).

    Returns:
        ``instruments`` (list), ``ensemble``, ``tempo``, ``mode``, ``metre``, ``style``
        (strings or ``None``) and ``bpm`` (float or ``None``).
    """
    instruments = [str(i).strip().lower() for i in tags.get("instruments") or []]
    truth = tags_from_meta(tags, ("tempo", "metre", "style"))
    by_field = {t.split(":", 1)[0]: t.split(":", 1)[1] for t in truth}
    bpm = tags.get("bpm")
    ensemble = tags.get("ensemble")
    return {
        "instruments": list(dict.fromkeys(instruments)),
        "ensemble": ensemble_pattern(ensemble, instruments) if ensemble else None,
        "tempo": by_field.get("tempo"),
        "mode": mode_class(tags["mode"]) if tags.get("mode") else None,
        "metre": by_field.get("metre"),
        "style": by_field.get("style"),
        "bpm": float(bpm) if bpm is not None else None,
    }


def encode_targets(tags: Mapping[str, Any], config: EmbeddedCaptionerConfig) -> dict[str, Any]:
    """Training targets of one clip.

    Returns:
        ``instruments``: multi-hot float32 array; each class head: an index, or -100
        (ignored) when the clip's label is missing or unseen; ``bpm``: the normalised log
        BPM, or NaN when unknown.
    """
    labels = clip_labels(tags)
    names = config.vocab["instruments"]
    multi_hot = np.zeros(len(names), dtype=np.float32)
    for name in labels["instruments"]:
        if name in names:
            multi_hot[names.index(name)] = 1.0
    out: dict[str, Any] = {"instruments": multi_hot}
    for head in CLASS_FIELDS:
        value, names = labels[head], config.vocab[head]
        out[head] = names.index(value) if value in names else -100
    bpm = labels["bpm"]
    out["bpm"] = (
        float((math.log(bpm) - config.bpm_log_mean) / config.bpm_log_std)
        if bpm and bpm > 0
        else float("nan")
    )
    return out
