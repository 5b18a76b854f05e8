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

import dataclasses
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from captioning.base import CONFIG_NAME, Captioner, register_captioner
from captioning.tags import ALL_FIELDS, INSTRUMENTS, mode_class, tags_from_meta, tags_from_text
from qamdt.audio_io import prepare_clips
from qamdt.audio_spec import get_audio_spec
from qamdt.audio_windows import padded_windows
from qamdt.corpus.arrangement import tempo_class, tempo_word
from qamdt.errors import ConfigError, QamdtError
from qamdt.mel import MelFrontEnd
from qamdt.modules.conv import conv_stack, frames_first, strided_lengths
from qamdt.modules.pooling import lengths_to_mask, stats_pool

WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
PLACEHOLDER = "{}"
# Single-label heads, in the order the sentence uses them.
CLASS_FIELDS: tuple[str, ...] = ("ensemble", "tempo", "mode", "metre", "style")


@dataclasses.dataclass
class EmbeddedCaptionerConfig:
    """Everything needed to rebuild the captioner; saved as ``config.json``.

    Attributes:
        vocab: Label names of each head: ``instruments``, ``ensemble`` (patterns),
            ``tempo``, ``mode``, ``metre``, ``style``. An empty list drops that head.
        mel_preset: Audio preset of the log-mel front end.
        mel_mean: Fixed shift of the log-mel (set from the training data).
        mel_std: Fixed scale of the log-mel.
        window_seconds: Length of the windows a clip is scored in.
        cnn_channels: Output channels of the conv blocks.
        cnn_strides: ``(frequency, time)`` down-sampling of each block.
        embed_dim: Width of the per-frame projection (pooled to twice this).
        time_pool: Frames averaged together before the conv stack (timbre, harmony and
            style need no 12 ms resolution; the onset autocorrelation keeps full rate).
        tempo_lags_seconds: Longest lag of the onset autocorrelation fed to the heads, which
            gives them the periodicity a mean over time would blur; 0 disables it.
        tempo_dim: Width of the projected autocorrelation.
        dropout: Dropout before the heads.
        predict_bpm: Whether there is a BPM head.
        bpm_log_mean: Mean of log BPM in training (the BPM head predicts z-scores).
        bpm_log_std: Standard deviation of log BPM in training.
        instrument_threshold: Instruments whose probability reaches this are named (at
            least the most probable one always is).
    """

    vocab: dict[str, list[str]]
    mel_preset: str = "embedded"
    mel_mean: float = -4.5
    mel_std: float = 2.5
    window_seconds: float = 5.0
    cnn_channels: tuple[int, ...] = (16, 32, 64, 128)
    cnn_strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 2), (2, 1))
    embed_dim: int = 128
    time_pool: int = 2
    tempo_lags_seconds: float = 2.0
    tempo_dim: int = 32
    dropout: float = 0.2
    predict_bpm: bool = True
    bpm_log_mean: float = math.log(90.0)
    bpm_log_std: float = 0.3
    instrument_threshold: float = 0.5

    def __post_init__(self):
        self.cnn_channels = tuple(int(c) for c in self.cnn_channels)
        self.cnn_strides = tuple(tuple(int(v) for v in s) for s in self.cnn_strides)
        heads = ("instruments", *CLASS_FIELDS)
        unknown = sorted(set(self.vocab) - set(heads))
        if unknown:
            raise ConfigError(f"vocab: unknown head(s) {unknown}; known: {list(heads)}")
        self.vocab = {h: [str(v) for v in self.vocab.get(h, [])] for h in heads}
        for head, names in self.vocab.items():
            if len(set(names)) != len(names):
                raise ConfigError(f"vocab.{head}: duplicate labels")
        get_audio_spec(self.mel_preset)
        if not self.cnn_channels or len(self.cnn_channels) != len(self.cnn_strides):
            raise ConfigError("cnn_channels and cnn_strides need the same, non-zero length")
        for name in ("window_seconds", "mel_std", "bpm_log_std"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.instrument_threshold < 1:
            raise ConfigError("instrument_threshold must be in (0, 1)")
        if self.time_pool < 1:
            raise ConfigError(f"time_pool must be >= 1, got {self.time_pool}")
        if self.tempo_lags_seconds < 0:
            raise ConfigError("tempo_lags_seconds must be >= 0")

    @property
    def sample_rate(self) -> int:
        """Rate the network's input audio is at."""
        return get_audio_spec(self.mel_preset).sample_rate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with ``kind`` and ``format_version``."""
        out = dataclasses.asdict(self)
        out["cnn_channels"] = list(self.cnn_channels)
        out["cnn_strides"] = [list(s) for s in self.cnn_strides]
        return {"kind": EmbeddedCaptioner.kind, "format_version": FORMAT_VERSION, **out}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EmbeddedCaptionerConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: On a wrong kind or version, or an unknown or invalid setting.
        """
        values = dict(values)
        kind = values.pop("kind", EmbeddedCaptioner.kind)
        if kind != EmbeddedCaptioner.kind:
            raise ConfigError(f"kind: expected {EmbeddedCaptioner.kind!r}, got {kind!r}")
        version = values.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ConfigError(f"format_version {version} is not supported ({FORMAT_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown captioner setting(s) {unknown}; known: {sorted(known)}")
        if "vocab" not in values:
            raise ConfigError("vocab is missing")
        return cls(**values)


# ------------------------------------------------------------------ labels and targets


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


# ------------------------------------------------------------------------- network


class TagNet(nn.Module):
    """Log-mel windows to the logits of every head.

    The conv stack down-samples frequency and time; channels and remaining frequency bins
    are flattened and projected per time step, so absolute pitch and timbre position
    survive; mean and standard deviation over the valid frames pool the sequence.

    Args:
        config: The captioner's configuration.
    """

    def __init__(self, config: EmbeddedCaptionerConfig):
        super().__init__()
        self.config = config
        self.mel = MelFrontEnd(config.mel_preset)
        self.blocks, flat = conv_stack(
            config.cnn_channels, config.cnn_strides, self.mel.spec.n_mels
        )
        self.time_strides = [s[1] for s in config.cnn_strides]
        self.proj = nn.Sequential(nn.Linear(flat, config.embed_dim), nn.GELU())
        width = 2 * config.embed_dim
        self.num_lags = round(config.tempo_lags_seconds * self.mel.spec.frames_per_second)
        if self.num_lags:
            self.tempo_proj = nn.Sequential(nn.Linear(self.num_lags, config.tempo_dim), nn.GELU())
            width += config.tempo_dim
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict(
            {head: nn.Linear(width, len(names)) for head, names in config.vocab.items() if names}
        )
        if config.predict_bpm:
            self.heads["bpm"] = nn.Linear(width, 1)

    def _frame_steps(self, frames: torch.Tensor) -> torch.Tensor:
        pool = self.config.time_pool
        frames = torch.div(frames + pool - 1, pool, rounding_mode="floor")
        return strided_lengths(frames, self.time_strides)

    def _onset_autocorrelation(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Spectral flux of the log-mel, centred over the valid frames, autocorrelated
        # through the FFT and divided by its zero lag.
        flux = torch.relu(x[:, :, 1:] - x[:, :, :-1]).mean(dim=1)
        valid = lengths_to_mask((lengths - 1).clamp_min(1), flux.shape[1]).to(flux.dtype)
        mean = (flux * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True)
        env = (flux - mean) * valid
        size = 2 * env.shape[1]
        spectrum = torch.fft.rfft(env, n=size)
        ac = torch.fft.irfft(spectrum.real.square() + spectrum.imag.square(), n=size)
        ac = ac[:, 1 : self.num_lags + 1] / (ac[:, :1] + 1e-6)
        if ac.shape[1] < self.num_lags:
            ac = nn.functional.pad(ac, (0, self.num_lags - ac.shape[1]))
        return ac

    def forward(self, mels: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head.

        Args:
            mels: ``(B, n_mels, T)`` raw log-mels (natural log, from ``self.mel``).
            lengths: ``(B,)`` valid frames per row; later frames are padding.

        Returns:
            Head name to ``(B, classes)`` logits (``(B,)`` for ``bpm``).
        """
        x = (mels - self.config.mel_mean) / self.config.mel_std
        steps = self._frame_steps(lengths)
        h = x.unsqueeze(1)
        if self.config.time_pool > 1:
            pool = self.config.time_pool
            h = nn.functional.avg_pool2d(h, (1, pool), ceil_mode=True)
        h = self.blocks(h)
        h = self.proj(frames_first(h))
        features = [stats_pool(h, lengths_to_mask(steps, h.shape[1]))]
        if self.num_lags:
            features.append(self.tempo_proj(self._onset_autocorrelation(x, lengths)))
        pooled = self.dropout(torch.cat(features, dim=-1))
        out = {head: layer(pooled) for head, layer in self.heads.items()}
        if "bpm" in out:
            out["bpm"] = out["bpm"].squeeze(-1)
        return out


# ---------------------------------------------------------------------- captioner


def _article(words: str) -> str:
    return "an" if words[:1].lower() in "aeiou" else "a"


def _join(words: Sequence[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


@register_captioner("embedded")
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
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        safetensors.torch.save_file(
            state, str(directory / WEIGHTS_NAME), metadata={"kind": self.kind}
        )
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> EmbeddedCaptioner:
        """Rebuilds a saved captioner, loading every weight strictly.

        Raises:
            QamdtError: On missing files, or weights that do not match the config.
            ConfigError: On an invalid config.
        """
        directory = Path(path)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for needed in (config_path, weights_path):
            if not needed.is_file():
                raise QamdtError(f"{needed}: missing; not a saved embedded captioner")
        try:
            values = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{config_path}: invalid JSON ({exc.msg})") from None
        captioner = cls(EmbeddedCaptionerConfig.from_dict(values))
        state = safetensors.torch.load_file(str(weights_path))
        expected = captioner.model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise QamdtError(
                f"{weights_path}: weights do not match the config (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                raise QamdtError(
                    f"{weights_path}: {key} has shape {tuple(tensor.shape)}, the config "
                    f"needs {tuple(expected[key].shape)}"
                )
        captioner.model.load_state_dict(state, strict=True)
        captioner.model.eval()
        return captioner
