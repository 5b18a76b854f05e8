"""The LP-MusicCaps captioner (Doh et al., ISMIR 2023), rebuilt so its released weights load.

Expected real checkpoint: ``transfer.pth`` from huggingface.co/seungheondoh/lp-music-caps (the
"transfer" model: pretrained on LP-MusicCaps-MSD, fine-tuned on MusicCaps), a torch pickle
``{"state_dict": ..., "epoch": ...}`` of the class ``BartCaptionModel`` in
github.com/seungheondoh/lp-music-caps (``lpmc/music_captioning/model/bart.py`` and the
``AudioEncoder``/``MelEncoder`` of ``model/modules.py``), plus a local copy of the
``facebook/bart-base`` folder (``config.json``, ``vocab.json``, ``merges.txt``), whose config
builds the BART and whose tokenizer decodes the captions.

The model, as in that repository:

* 16 kHz mono audio in 10 s chunks (160,000 samples; shorter audio is zero-padded);
* ``MelEncoder``: STFT (n_fft 1024, win 1024, hop 160, Hann, centred, reflect padding) ->
  *the square of the real part* of the STFT (the original takes ``spec.real.abs().pow(2)``, not
  the squared magnitude; kept so the released weights see the features they were trained on) ->
  128 HTK mel bands over 0-8 kHz (torchaudio ``MelScale``, no normalisation) ->
  ``10 * log10(max(x, 1e-10))`` (torchaudio ``AmplitudeToDB``, no ``top_db``): 1001 frames;
* ``AudioEncoder``: ``conv1`` (n_mels -> 768, kernel 3, padding 1) and ``conv_stack``, five
  convs (768 -> 768, kernel 3, stride 2, padding 1), each followed by GELU: 1001 -> 32 frames,
  plus a fixed sinusoidal ``positional_embedding`` buffer of ``(32, 768)``;
* ``BartForConditionalGeneration`` (bart-base: d_model 768, 6 + 6 layers) whose encoder takes
  the 32 frames as ``inputs_embeds`` and whose decoder writes the caption (beam search, 5 beams,
  ``max_length`` 128, ``min_length`` 2 in the original inference script).

State-dict keys of the released checkpoint (read from the repository source, the checkpoint
itself was not available offline): ``audio_encoder.mel_encoder.spec_fn.window`` (1024,),
``audio_encoder.mel_encoder.mel_scale.fb`` (513, 128), ``audio_encoder.conv1.{weight,bias}``,
``audio_encoder.conv_stack.{0..4}.{weight,bias}``, ``audio_encoder.positional_embedding``
(32, 768) and ``bart.*`` (``bart.final_logits_bias``, ``bart.model.shared.weight``,
``bart.model.{encoder,decoder}.*``, ``bart.lm_head.weight``). The torchaudio modules are
replaced by torch-only ones with the same buffer names, so loading stays strict.

Generation: the original ``BartCaptionModel.generate`` passes only beams and lengths; everything
else came from the bart-base ``config.json`` (``no_repeat_ngram_size`` 3, ``early_stopping``,
``forced_bos_token_id`` 0, ``forced_eos_token_id`` 2). Those inherited values are read from the
BART folder's ``config.json`` when the captioner is built and kept in ``generation_defaults``.

Long audio: split into whole 10 s chunks like the original (``floor(len / 10 s)`` chunks, the
remainder dropped; shorter audio padded). ``long_audio`` picks what a clip's caption is:
``"center"`` (default) captions only the most central chunk (the earlier of two), ``"first"`` the
first one, ``"join"`` captions every chunk and joins the captions with spaces (consecutive
duplicates dropped). The corpus clips (10.03 s) are one chunk either way.

Audio level: the original fed decoded audio unchanged, and the dB features depend on the level,
so by default (``peak`` None) clips are not peak-normalised; set ``peak`` (e.g. 0.5, the QA-MDT
convention) to normalise them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captioning.base import CONFIG_NAME, Captioner, read_saved_config, register_captioner
from captioning.devices import resolve_device, seeded
from captioning.lp_musiccaps_model import BartCaptionModel
from qamdt.audio_io import prepare_clips
from qamdt.checkpoints import (
    CheckpointError,
    load_state_strict,
    load_torch_checkpoint,
    read_state_file,
    save_state_file,
)
from qamdt.config import ConfigBase
from qamdt.errors import ConfigError
from qamdt.json_files import write_json

WEIGHTS_NAME = "model.safetensors"
BART_DIR = "bart"
FORMAT_VERSION = 1
LONG_AUDIO_MODES = ("center", "first", "join")

# Generation settings the released model inherited from the bart-base config.json.
INHERITED_GENERATION_KEYS = (
    "no_repeat_ngram_size",
    "early_stopping",
    "length_penalty",
    "forced_bos_token_id",
    "forced_eos_token_id",
)


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass
class LpMusicCapsConfig(ConfigBase):
    """Settings of an LP-MusicCaps captioner (all JSON-serialisable).

    Attributes:
        checkpoint: The released ``transfer.pth`` the weights came from (provenance only
            once saved; a saved folder holds its own weights).
        bart: The BART folder (config + tokenizer) it was built with (provenance likewise).
        n_mels: Mel bands of the front end.
        num_of_conv: Convolutions of the front end (1 plain + ``num_of_conv - 1`` strided).
        duration: Chunk length in seconds.
        num_beams: Beam width (5 in the original inference).
        max_length: Longest caption in tokens, start token included (128).
        min_length: Shortest caption (2).
        repetition_penalty: 1.0 (no penalty) in the original beam search.
        do_sample: Nucleus sampling instead of beam search.
        top_p: Nucleus mass when sampling.
        seed: Seed of the sampler (sampling only), for reproducible captions.
        generation_defaults: Other ``GenerationConfig`` values, by default those inherited
            from the BART ``config.json`` (see ``INHERITED_GENERATION_KEYS``).
        long_audio: ``"center"``, ``"first"`` or ``"join"`` (module docstring).
        peak: Peak-normalise clips to this before the front end; None keeps their level.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    """

    checkpoint: str | None = None
    bart: str | None = None
    n_mels: int = 128
    num_of_conv: int = 6
    duration: int = 10
    num_beams: int = 5
    max_length: int = 128
    min_length: int = 2
    repetition_penalty: float = 1.0
    do_sample: bool = False
    top_p: float = 0.9
    seed: int = 0
    generation_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    long_audio: str = "center"
    peak: float | None = None
    device: str = "cpu"

    config_where = "<config>"
    config_noun = "lp-musiccaps setting"
    config_ignore = ("kind", "format_version")

    def __post_init__(self) -> None:
        if self.long_audio not in LONG_AUDIO_MODES:
            raise ConfigError(f"long_audio: {self.long_audio!r} is not one of {LONG_AUDIO_MODES}")
        for name in ("n_mels", "num_of_conv", "duration", "num_beams", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.min_length < 0 or self.min_length > self.max_length:
            raise ConfigError(f"min_length: {self.min_length} is outside 0..max_length")
        if self.peak is not None and not 0 < self.peak <= 1:
            raise ConfigError(f"peak: must be in (0, 1] or null, got {self.peak}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")


def inherited_generation_defaults(bart_dir: str | os.PathLike) -> dict[str, Any]:
    """The generation values a BART folder's raw ``config.json`` sets (bart-base: 4 of them).

    Read from the JSON itself, since newer transformers move such keys out of the model config.
    """
    path = Path(bart_dir) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"bart: {path} is missing; not a BART model folder")
    raw = json.loads(path.read_text())
    return {key: raw[key] for key in INHERITED_GENERATION_KEYS if raw.get(key) is not None}


# --------------------------------------------------------------------------- the captioner


def split_chunks(wave: np.ndarray, n_samples: int) -> list[np.ndarray]:
    """LP-MusicCaps' chunking: pad to one chunk, else ``floor(len / n)`` whole chunks."""
    if len(wave) < n_samples:
        padded = np.zeros(n_samples, dtype=np.float32)
        padded[: len(wave)] = wave
        return [padded]
    count = len(wave) // n_samples
    return [wave[i * n_samples : (i + 1) * n_samples] for i in range(count)]


def select_chunks(count: int, mode: str) -> list[int]:
    """Indices of the chunks to caption: the central one, the first one, or all."""
    if mode == "join":
        return list(range(count))
    if mode == "first":
        return [0]
    return [(count - 1) // 2]


def join_captions(captions: list[str]) -> str:
    """Chunk captions joined by spaces, consecutive repeats dropped."""
    kept: list[str] = []
    for text in captions:
        text = text.strip()
        if text and (not kept or kept[-1] != text):
            kept.append(text)
    return " ".join(kept)


@register_captioner("lp-musiccaps")
class LpMusicCapsCaptioner(Captioner):
    """LP-MusicCaps behind the :class:`~captioning.base.Captioner` interface.

    Build it from the released files with :meth:`from_checkpoint`, or reload a saved one with
    :meth:`from_pretrained`.

    Args:
        model: The :class:`BartCaptionModel` (weights loaded).
        tokenizer: The BART tokenizer.
        config: Its settings.
    """

    sample_rate = 16000

    def __init__(self, model: BartCaptionModel, tokenizer, config: LpMusicCapsConfig):
        self.config = config
        self.tokenizer = tokenizer
        self.device = resolve_device(config.device)
        self.model = model.to(self.device).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    # ----------------------------------------------------------------------- building

    @staticmethod
    def _load_bart(bart_dir: str | os.PathLike):
        from transformers import AutoTokenizer, BartConfig

        bart_dir = Path(bart_dir)
        if not (bart_dir / CONFIG_NAME).is_file():
            raise ConfigError(f"bart: {bart_dir} has no {CONFIG_NAME}; not a BART model folder")
        try:
            bart_config = BartConfig.from_pretrained(os.fspath(bart_dir), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(os.fspath(bart_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"bart: cannot load config/tokenizer from {bart_dir} ({exc})"
            ) from exc
        return bart_config, tokenizer

    @staticmethod
    def _build_model(bart_config, config: LpMusicCapsConfig) -> BartCaptionModel:
        return BartCaptionModel(
            bart_config,
            n_mels=config.n_mels,
            num_of_conv=config.num_of_conv,
            sr=LpMusicCapsCaptioner.sample_rate,
            duration=config.duration,
        )

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike, bart: str | os.PathLike, **settings: Any
    ) -> LpMusicCapsCaptioner:
        """Builds the captioner from a released ``transfer.pth`` and a local bart-base folder.

        Args:
            checkpoint: A torch checkpoint holding ``{"state_dict": ...}`` (or a bare state
                dict) of ``BartCaptionModel``; loaded with ``weights_only=True``, strictly. A
                ``module.`` prefix on every key (DDP training) is removed.
            bart: Folder with the BART ``config.json`` and tokenizer files.
            **settings: Other :class:`LpMusicCapsConfig` fields.

        Raises:
            CheckpointError: If the checkpoint cannot be read or its keys or shapes differ
                from the model's (the keys are named).
            ConfigError: On a bad setting or BART folder.
        """
        generation_defaults = inherited_generation_defaults(bart)
        generation_defaults.update(settings.pop("generation_defaults", None) or {})
        config = LpMusicCapsConfig.from_dict(
            {
                **settings,
                "checkpoint": os.fspath(checkpoint),
                "bart": os.fspath(bart),
                "generation_defaults": generation_defaults,
            }
        )
        bart_config, tokenizer = cls._load_bart(bart)
        model = cls._build_model(bart_config, config)
        obj = load_torch_checkpoint(checkpoint)
        if isinstance(obj, Mapping) and "state_dict" in obj:
            state = obj["state_dict"]
        elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = obj
        else:
            raise CheckpointError(f"{checkpoint}: no 'state_dict' entry")
        state = dict(state)
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module.") :]: v for k, v in state.items()}
        load_state_strict(model, state, checkpoint)
        return cls(model, tokenizer, config)

    # ----------------------------------------------------------------------- captioning

    def generation_config(self):
        """The ``GenerationConfig`` the captions are decoded with."""
        from transformers import GenerationConfig

        bart_config = self.model.bart.config
        values: dict[str, Any] = {
            "decoder_start_token_id": bart_config.decoder_start_token_id,
            "bos_token_id": bart_config.bos_token_id,
            "eos_token_id": bart_config.eos_token_id,
            "pad_token_id": bart_config.pad_token_id,
        }
        values.update(self.config.generation_defaults)
        values.update(
            max_length=self.config.max_length,
            min_length=self.config.min_length,
            repetition_penalty=self.config.repetition_penalty,
        )
        if self.config.do_sample:
            values.update(do_sample=True, top_p=self.config.top_p, num_beams=1)
        else:
            values.update(do_sample=False, num_beams=self.config.num_beams)
        if values["num_beams"] == 1:
            # Beam-only settings; dropping them keeps transformers from warning.
            values.pop("early_stopping", None)
            values.pop("length_penalty", None)
        return GenerationConfig(**values)

    def caption_chunks(self, chunks: np.ndarray, batch_size: int = 8) -> list[str]:
        """Captions ``(N, duration * 16000)`` chunks of 16 kHz audio, one string each."""
        generation_config = self.generation_config()
        captions: list[str] = []
        for start in range(0, len(chunks), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(chunks[start : start + batch_size]))
            with contextlib.ExitStack() as stack:
                if self.config.do_sample:
                    stack.enter_context(seeded(self.config.seed + start, self.device))
                ids = self.model.generate(batch.to(self.device), generation_config)
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            captions.extend(text.strip() for text in texts)
        return captions

    def caption(
        self, audio: list[np.ndarray], sample_rates: int | list[int], batch_size: int = 8
    ) -> list[str]:
        """One caption per clip (see the module docstring for long audio).

        Args:
            audio: 1-D (or ``(channels, samples)``) float arrays at any rate.
            sample_rates: One rate for all clips or one per clip.
            batch_size: Chunks per forward pass.

        Raises:
            ValueError: On an empty batch or a rate list of the wrong length.
            AudioError: On NaN/inf samples or an absurd rate.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        waves = prepare_clips(audio, sample_rates, self.sample_rate, peak=self.config.peak)
        chunks: list[np.ndarray] = []
        owners: list[int] = []
        for index, wave in enumerate(waves):
            clip_chunks = split_chunks(wave, self.model.n_sample)
            for chunk_index in select_chunks(len(clip_chunks), self.config.long_audio):
                chunks.append(clip_chunks[chunk_index])
                owners.append(index)
        texts = self.caption_chunks(np.stack(chunks), batch_size=batch_size)
        per_clip: list[list[str]] = [[] for _ in waves]
        for owner, text in zip(owners, texts, strict=True):
            per_clip[owner].append(text)
        return [join_captions(parts) for parts in per_clip]

    # ----------------------------------------------------------------------- save and load

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``config.json``, ``model.safetensors`` and ``bart/`` (BART config + tokenizer).

        Args:
            directory: The folder; created if missing, existing files replaced.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_state_file(self.model, directory / WEIGHTS_NAME)
        bart_dir = directory / BART_DIR
        bart_dir.mkdir(exist_ok=True)
        self.model.bart.config.save_pretrained(bart_dir)
        self.tokenizer.save_pretrained(bart_dir)
        payload = {"kind": self.kind, "format_version": FORMAT_VERSION, **self.config.to_dict()}
        write_json(directory / CONFIG_NAME, payload, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> LpMusicCapsCaptioner:
        """Rebuilds a captioner written by :meth:`save_pretrained` from that folder alone.

        Raises:
            CheckpointError: If a file is missing or the weights do not match (keys named).
            ConfigError: If the config is not an lp-musiccaps one or holds unknown keys.
        """
        directory = Path(path)
        values, config_path = read_saved_config(directory, cls.kind)
        config = LpMusicCapsConfig.from_dict(values, os.fspath(config_path))
        bart_config, tokenizer = cls._load_bart(directory / BART_DIR)
        model = cls._build_model(bart_config, config)
        load_state_strict(
            model, read_state_file(directory / WEIGHTS_NAME), directory / WEIGHTS_NAME
        )
        return cls(model, tokenizer, config)
