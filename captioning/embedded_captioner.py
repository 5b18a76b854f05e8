"""The ``embedded`` captioner: a log-mel CNN tagger whose predictions fill a sentence template.

It trains from scratch on the corpus's structured tags in minutes on a CPU
(``captioning.train_captioner``). One network has a head per field:

* ``instruments``: multi-label sigmoid over the instrument names seen in training;
* ``ensemble``: softmax over ensemble *patterns*, the ensemble words with the instrument
  names cut out ("solo violin" -> "solo {}", "flute and violin in unison" ->
  "{} and {} in unison"), so rare combinations share one class and the sentence can
  never name an instrument the instrument head did not predict;
* ``tempo`` (slow/medium/fast), ``mode`` (major/minor/other), ``metre`` and ``style``:
  softmax each, over the values seen in training;
* ``bpm``: regression of the normalised log tempo.

A caption never states what the network does not predict (no composer, form or key
tonic). The BPM and its Italian marking are written only when they agree with the
predicted tempo class, so every sentence reads back (``captioning.tags.tags_from_text``)
to exactly the predicted instrument, tempo, mode, metre and style tags.

Long and short audio: each clip's log-mel is cut into ``ceil(frames / window)`` windows of
``window_seconds`` spread evenly from its start to its end (a shorter clip is one padded
window whose padding pooling ignores); the heads' logits are averaged over the windows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from captioning.base import CONFIG_NAME, Captioner, read_saved_config, register_captioner
from captioning.tagger_labels import PLACEHOLDER
from captioning.tagger_model import CLASS_FIELDS, KIND, EmbeddedCaptionerConfig, TagNet
from captioning.tags import ALL_FIELDS, tags_from_text
from qamdt.audio_io import prepare_clips
from qamdt.audio_windows import padded_windows
from qamdt.checkpoints import load_state_strict, read_state_file
from qamdt.corpus.arrangement import tempo_class, tempo_word

WEIGHTS_NAME = "model.safetensors"


# ---------------------------------------------------------------------- captioner


def _article(words: str) -> str:
    return "an" if words[:1].lower() in "aeiou" else "a"


def _join(words: Sequence[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


@register_captioner(KIND)
class EmbeddedCaptioner(Captioner):
    """Log-mel CNN tagger turned captioner; see the module docstring.

    Args:
        config: Vocabularies and hyperparameters.
    """

    def __init__(self, config: EmbeddedCaptionerConfig):
        self.config = config
        self.sample_rate = config.sample_rate
        self.model = TagNet(config)
        self.model.eval()

    @property
    def window_frames(self) -> int:
        """Frames in one scoring (and training) window."""
        spec = self.model.mel.spec
        return max(1, round(self.config.window_seconds * spec.frames_per_second))

    # -------------------------------------------------------------------- inference

    @torch.no_grad()
    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """Raw log-mel ``(n_mels, frames)`` of one prepared (resampled, normalised) clip."""
        wave = np.asarray(wave, dtype=np.float32)
        short = self.model.mel.min_samples - wave.shape[0]
        if short > 0:
            wave = np.pad(wave, (0, short))
        return self.model.mel(torch.from_numpy(wave)).float().cpu().numpy()

    def _windows(self, mel: np.ndarray) -> list[tuple[np.ndarray, int]]:
        floor = math.log(self.model.mel.spec.log_floor)
        return padded_windows(mel, self.window_frames, fill=floor)

    @torch.no_grad()
    def logits_from_mels(
        self, mels: Sequence[np.ndarray], batch_size: int = 8
    ) -> list[dict[str, np.ndarray]]:
        """Window-averaged head outputs of whole-clip log-mels (from :meth:`log_mel`).

        Returns:
            One dict per clip: head name to mean logits (a float for ``bpm``).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = next(self.model.parameters()).device
        pending = [(i, w, n) for i, mel in enumerate(mels) for w, n in self._windows(mel)]
        sums: list[dict[str, np.ndarray]] = [{} for _ in mels]
        counts = np.zeros(len(mels))
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(pending), batch_size):
                part = pending[start : start + batch_size]
                batch = torch.from_numpy(np.stack([p[1] for p in part]).astype(np.float32)).to(
                    device
                )
                lengths = torch.tensor([p[2] for p in part], device=device)
                out = {k: v.float().cpu().numpy() for k, v in self.model(batch, lengths).items()}
                for row, (owner, _, _) in enumerate(part):
                    for head, values in out.items():
                        sums[owner][head] = sums[owner].get(head, 0.0) + values[row]
                    counts[owner] += 1
        finally:
            self.model.train(was_training)
        return [{h: v / counts[i] for h, v in s.items()} for i, s in enumerate(sums)]

    def decode(self, logits: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Predictions of one clip from its averaged logits.

        Returns:
            ``instruments`` (names, in vocabulary order), ``instrument_probs``, the
            argmax of each class head (``None`` when the head is absent), the ranked
            ensemble patterns ``ensemble_ranking`` and ``bpm`` (rounded, or ``None``).
        """
        vocab = self.config.vocab
        pred: dict[str, Any] = {"instruments": [], "instrument_probs": {}}
        if "instruments" in logits:
            probs = 1.0 / (1.0 + np.exp(-np.asarray(logits["instruments"], dtype=np.float64)))
            chosen = probs >= self.config.instrument_threshold
            chosen[int(np.argmax(probs))] = True
            names = vocab["instruments"]
            pred["instruments"] = [n for n, c in zip(names, chosen, strict=True) if c]
            pred["instrument_probs"] = {
                n: float(p) for n, p in zip(vocab["instruments"], probs, strict=True)
            }
        for head in CLASS_FIELDS:
            values = logits.get(head)
            pred[head] = None if values is None else vocab[head][int(np.argmax(values))]
        values = logits.get("ensemble")
        pred["ensemble_ranking"] = (
            [] if values is None else [vocab["ensemble"][i] for i in np.argsort(-values)]
        )
        pred["bpm"] = None
        if "bpm" in logits:
            log_bpm = self.config.bpm_log_mean + self.config.bpm_log_std * float(logits["bpm"])
            pred["bpm"] = int(round(math.exp(min(max(log_bpm, 2.0), 6.5))))
        return pred

    @staticmethod
    def predicted_tags(pred: Mapping[str, Any]) -> set[str]:
        """The evaluated tags (``captioning.tags.FIELDS``) a prediction states."""
        tags = {f"instrument:{n}" for n in pred["instruments"]}
        for field in ("tempo", "mode", "metre", "style"):
            if pred.get(field):
                tags.add(f"{field}:{pred[field]}")
        return tags

    def _players(self, pred: Mapping[str, Any]) -> str:
        instruments = list(pred["instruments"])
        wanted = {f"instrument:{n}" for n in instruments}
        for pattern in pred.get("ensemble_ranking") or []:
            holes = pattern.count(PLACEHOLDER)
            if holes == 0:
                implied = tags_from_text(pattern, ALL_FIELDS)
                if implied == wanted:
                    candidate = f"{_article(pattern)} {pattern}"
                elif implied:
                    continue
                else:
                    candidate = f"{_article(pattern)} {pattern} of {_join(instruments)}"
            elif holes == len(instruments):
                filled = pattern
                for name in instruments:
                    filled = filled.replace(PLACEHOLDER, name, 1)
                candidate = f"{_article(filled)} {filled}"
            else:
                continue
            if tags_from_text(candidate, ALL_FIELDS) == wanted:
                return candidate
        return _join(instruments)

    def sentence(self, pred: Mapping[str, Any]) -> str:
        """One sentence stating exactly the predicted fields (see the module docstring)."""
        style = pred.get("style")
        text = f"{_article(style).capitalize()} {style} piece" if style else "A piece"
        if pred["instruments"]:
            text += f" played by {self._players(pred)}"
        clauses = []
        tempo, bpm = pred.get("tempo"), pred.get("bpm")
        if tempo:
            if bpm and tempo_class(bpm) == tempo:
                clauses.append(f"at a {tempo} tempo ({tempo_word(bpm)}, about {bpm} BPM)")
            else:
                clauses.append(f"at a {tempo} tempo")
        mode, metre = pred.get("mode"), pred.get("metre")
        where = []
        if mode:
            where.append("a church mode" if mode == "other" else f"a {mode} key")
        if metre:
            where.append(f"{metre} time")
        if where:
            clauses.append("in " + " and ".join(where))
        return ", ".join([text, *clauses]) + "."

    def predict(
        self, audio: list[np.ndarray], sample_rates: int | list[int], batch_size: int = 8
    ) -> list[dict[str, Any]]:
        """Structured predictions (see :meth:`decode`) of a batch of clips.

        Args:
            audio: 1-D float arrays of any length.
            sample_rates: One rate for all clips or one per clip.
            batch_size: Windows per forward pass.
        """
        prepared = prepare_clips(audio, sample_rates, self.sample_rate)
        mels = [self.log_mel(wave) for wave in prepared]
        return [self.decode(lg) for lg in self.logits_from_mels(mels, batch_size)]

    def caption(
        self, audio: list[np.ndarray], sample_rates: int | list[int], batch_size: int = 8
    ) -> list[str]:
        """One sentence per clip (any length, any rate); deterministic."""
        return [self.sentence(p) for p in self.predict(audio, sample_rates, batch_size)]

    def captions_from_mels(self, mels: Sequence[np.ndarray], batch_size: int = 8) -> list[str]:
        """Like :meth:`caption` for whole-clip log-mels already computed by :meth:`log_mel`."""
        return [self.sentence(self.decode(lg)) for lg in self.logits_from_mels(mels, batch_size)]

    # ------------------------------------------------------------------ save and load

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``config.json`` and ``model.safetensors`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # One metadata key: safetensors orders several at random, and a rerun must give
        # the same bytes.
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        safetensors.torch.save_file(
            state, str(directory / WEIGHTS_NAME), metadata={"kind": self.kind}
        )
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> EmbeddedCaptioner:
        """Rebuilds a saved captioner, loading every weight strictly.

        Raises:
            CheckpointError: On a missing file or weights that do not match the config (the
                file and keys named).
            ConfigError: On an invalid config (the file named).
        """
        directory = Path(path)
        values, config_path = read_saved_config(directory, cls.kind, "embedded captioner")
        weights_path = directory / WEIGHTS_NAME
        captioner = cls(EmbeddedCaptionerConfig.from_dict(values, os.fspath(config_path)))
        load_state_strict(captioner.model, read_state_file(weights_path), weights_path)
        captioner.model.eval()
        return captioner
