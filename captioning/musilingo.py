"""MusiLingo (Deng et al., 2023): frozen audio encoder -> one linear layer -> frozen LLM.

Expected real models (local folders, nothing is downloaded):

* encoder: ``m-a-p/MERT-v1-330M`` (24 kHz, 1024-d, 25 hidden states at 75 Hz). It ships its own
  modelling code, so set ``trust_remote_code`` (the folder must hold ``modeling_MERT.py`` and
  ``configuration_MERT.py``); its ``preprocessor_config.json`` gives the rate and the
  zero-mean/unit-variance normalisation. Any transformers audio model loadable with
  ``AutoModel`` that takes ``input_values`` and returns ``hidden_states`` works (HuBERT,
  wav2vec 2.0, ...).
* LM: Vicuna-7B (a LLaMA ``AutoModelForCausalLM`` folder with its tokenizer, best with a
  ``tokenizer.json``: without it transformers needs sentencepiece to convert ``tokenizer.model``);
  ``lm_dtype`` float16 on a GPU.
* projection: trained here with :func:`captioning.train_musilingo.train_projection`, or taken
  from a released MusiLingo checkpoint (github.com/zihaod/MusiLingo ``checkpoint_*.pth``:
  ``{"model": {"llama_proj.weight", "llama_proj.bias"}, ...}``) through
  :meth:`MusiLingoCaptioner.load_projection`.

The pipeline follows the MusiLingo code (``musilingo/models/muvi_model.py``):

1. audio resampled to the encoder's rate (peak-normalised, then normalised as the encoder's
   feature extractor does), the central ``max_seconds`` kept;
2. encoder hidden states averaged over ``hidden_layers`` (MusiLingo: all of them, embedding
   output included);
3. temporal average compression: means over windows of ``pool_frames`` frames (MusiLingo: 325,
   about 4.3 s of MERT frames), a trailing partial window averaged too;
4. ``llama_proj``, the single trainable ``nn.Linear`` into the LM's embedding space (averaging
   then projecting equals projecting then averaging, the order of the paper);
5. ``[BOS] + prompt-before + audio tokens + prompt-after`` as ``inputs_embeds`` to the LM, whose
   continuation, cut at ``end_sym``, is the caption.

The default prompt is MusiLingo's instruction template with its MusicCaps captioning instruction:
``"###Human: <Audio><AudioHere></Audio> Please give a caption to the music. ###Assistant: "``.
Decoding is greedy by default (MusiLingo sampled at temperature 0.1, top-p 0.5, nearly greedy);
``do_sample`` with ``seed`` gives reproducible sampling.

A saved captioner is a folder with ``config.json`` (kind ``musilingo``), ``projection.safetensors``
and ``tokenizer/``. Encoder and LM are referenced by their folder paths; ones built from config
dicts (tests) have their configs in ``config.json`` and their weights in ``encoder.safetensors``
/ ``lm.safetensors``, so the folder rebuilds them exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from captioning.base import CONFIG_NAME, Captioner, read_saved_config, register_captioner
from captioning.devices import resolve_device, seeded
from captioning.musilingo_model import LM_DTYPES, MusiLingoConfig, MusiLingoModel
from qamdt.audio_io import prepare_clips
from qamdt.checkpoints import (
    CheckpointError,
    load_state_strict,
    load_torch_checkpoint,
    read_state_file,
    save_state_file,
)
from qamdt.errors import ConfigError
from qamdt.json_files import write_json
from qamdt.transformers_loading import config_from_dict, config_to_dict

PROJECTION_NAME = "projection.safetensors"
ENCODER_WEIGHTS = "encoder.safetensors"
LM_WEIGHTS = "lm.safetensors"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- loading


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _load_encoder(config: MusiLingoConfig) -> nn.Module:
    from transformers import AutoModel

    if config.encoder is not None:
        try:
            return AutoModel.from_pretrained(
                config.encoder, local_files_only=True, trust_remote_code=config.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"encoder: cannot load a model from '{config.encoder}' ({exc})"
            ) from exc
    return AutoModel.from_config(config_from_dict(config.encoder_config, None, "encoder_config"))


def _load_lm(config: MusiLingoConfig) -> nn.Module:
    from transformers import AutoModelForCausalLM

    dtype = LM_DTYPES[config.lm_dtype]
    if config.lm is not None:
        try:
            return AutoModelForCausalLM.from_pretrained(
                config.lm,
                local_files_only=True,
                trust_remote_code=config.trust_remote_code,
                **_dtype_kwargs(dtype),
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"lm: cannot load a causal LM from '{config.lm}' ({exc})") from exc
    lm = AutoModelForCausalLM.from_config(config_from_dict(config.lm_config, None, "lm_config"))
    return lm.to(dtype)


def _load_tokenizer(path: str | os.PathLike, field: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{field}: cannot load a tokenizer from '{path}' ({exc})") from exc


def _resolve_preprocessing(config: MusiLingoConfig) -> None:
    """Fills ``encoder_sample_rate``/``do_normalize`` from the encoder's preprocessor config."""
    raw: dict[str, Any] = {}
    if config.encoder is not None:
        path = Path(config.encoder) / "preprocessor_config.json"
        if path.is_file():
            raw = json.loads(path.read_text())
    if config.encoder_sample_rate is None:
        config.encoder_sample_rate = int(raw.get("sampling_rate", 16000))
    if config.do_normalize is None:
        config.do_normalize = bool(raw.get("do_normalize", True))


# --------------------------------------------------------------------------- the captioner


@register_captioner("musilingo")
class MusiLingoCaptioner(Captioner):
    """MusiLingo behind the :class:`~captioning.base.Captioner` interface.

    Build one with :meth:`build` (folders or config dicts), reload one with
    :meth:`from_pretrained`.

    Args:
        model: The :class:`MusiLingoModel`.
        tokenizer: The LM's tokenizer.
        config: Its settings (``encoder_sample_rate`` and ``do_normalize`` resolved).
    """

    def __init__(self, model: MusiLingoModel, tokenizer, config: MusiLingoConfig):
        _resolve_preprocessing(config)
        self.config = config
        self.tokenizer = tokenizer
        self.sample_rate = int(config.encoder_sample_rate)
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.model.eval()

    @classmethod
    def build(cls, tokenizer=None, **settings: Any) -> MusiLingoCaptioner:
        """Loads or builds encoder, LM and tokenizer; the projection is freshly initialised.

        Args:
            tokenizer: A tokenizer object; None loads ``tokenizer`` (or ``lm``) from its folder.
            **settings: :class:`MusiLingoConfig` fields.

        Raises:
            ConfigError: On a bad setting, or a folder that cannot be loaded.
        """
        config = MusiLingoConfig.from_dict(settings)
        if tokenizer is None:
            source = config.tokenizer or config.lm
            if source is None:
                raise ConfigError("tokenizer: give a tokenizer or a tokenizer/lm folder")
            tokenizer = _load_tokenizer(source, "tokenizer")
        model = MusiLingoModel(
            _load_encoder(config), _load_lm(config), config.hidden_layers, config.pool_frames
        )
        return cls(model, tokenizer, config)

    def load_projection(self, checkpoint: str | os.PathLike) -> None:
        """Takes ``llama_proj`` from a released MusiLingo checkpoint (``torch.load``, weights only).

        Accepts ``{"model": state}`` (MusiLingo's runner) or a bare state dict; the keys may
        carry a prefix before ``llama_proj.`` (e.g. ``module.``).

        Raises:
            CheckpointError: If the file cannot be read or lacks a ``llama_proj`` weight/bias
                (named) or has the wrong shapes.
        """
        obj = load_torch_checkpoint(checkpoint)
        state = obj.get("model", obj) if isinstance(obj, Mapping) else None
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{checkpoint}: holds no state dict")
        found: dict[str, torch.Tensor] = {}
        for name in ("weight", "bias"):
            keys = [
                k for k in state if k == f"llama_proj.{name}" or k.endswith(f".llama_proj.{name}")
            ]
            if len(keys) != 1:
                raise CheckpointError(
                    f"{checkpoint}: expected one 'llama_proj.{name}' key, found {len(keys)}"
                )
            found[name] = state[keys[0]]
        load_state_strict(self.model.llama_proj, found, checkpoint)
        self.config.projection_checkpoint = os.fspath(checkpoint)

    # ----------------------------------------------------------------------- features

    def _input_values(self, wave: np.ndarray) -> torch.Tensor:
        max_len = int(round(self.config.max_seconds * self.sample_rate))
        min_len = int(round(self.config.min_seconds * self.sample_rate))
        if len(wave) > max_len:
            start = (len(wave) - max_len) // 2
            wave = wave[start : start + max_len]
        if len(wave) < min_len:
            wave = np.pad(wave, (0, min_len - len(wave)))
        if self.config.do_normalize:
            # Wav2Vec2FeatureExtractor's normalisation (MERT's preprocessor uses it).
            wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
        return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]

    def encode(self, audio: list[np.ndarray], sample_rates: int | list[int]) -> list[torch.Tensor]:
        """Pooled encoder features per clip, ``(T'_i, D_enc)`` each (no projection).

        Clips go through the encoder one at a time, so no padding changes their features.
        """
        waves = prepare_clips(audio, sample_rates, self.sample_rate)
        features = []
        for wave in waves:
            values = self._input_values(wave).to(self.device)
            features.append(self.model.encode_audio(values)[0])
        return features

    def _prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(before, after)`` token embeddings, BOS included in ``before`` when enabled."""
        before, after = self.config.prompt_parts()
        embed = self.model.llama_model.get_input_embeddings()
        pieces = []
        for index, text in enumerate((before, after)):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            if index == 0 and self.config.add_bos and self.tokenizer.bos_token_id is not None:
                ids = [self.tokenizer.bos_token_id, *ids]
            tensor = torch.tensor(ids, dtype=torch.long, device=self.device)
            pieces.append(embed(tensor))
        return pieces[0], pieces[1]

    def _inputs(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per clip, the prompt and audio embeddings ``(L_i, D_lm)`` in sequence order."""
        before, after = self._prompt_embeddings()
        return [
            torch.cat([before, self.model.project(f.to(self.device)), after], dim=0)
            for f in features
        ]

    # ----------------------------------------------------------------------- captioning

    def generation_config(self):
        """The ``GenerationConfig`` the captions are decoded with."""
        from transformers import GenerationConfig

        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        values: dict[str, Any] = {
            "max_new_tokens": self.config.max_new_tokens,
            "num_beams": self.config.num_beams,
            "do_sample": self.config.do_sample,
            "repetition_penalty": self.config.repetition_penalty,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "bos_token_id": self.tokenizer.bos_token_id,
        }
        if self.config.do_sample:
            values.update(temperature=self.config.temperature, top_p=self.config.top_p)
        if self.config.end_sym:
            # MusiLingo stops at "###" (a stopping criterion on its token ids).
            values["stop_strings"] = [self.config.end_sym]
        return GenerationConfig(**values)

    def _clean(self, text: str) -> str:
        if self.config.end_sym:
            text = text.split(self.config.end_sym)[0]
        return text.split("Assistant:")[-1].strip()

    @torch.no_grad()
    def caption(
        self, audio: list[np.ndarray], sample_rates: int | list[int], batch_size: int = 8
    ) -> list[str]:
        """One caption per clip (the central ``max_seconds`` of long clips).

        Clips with the same number of audio tokens are generated together, so no batch needs
        padding.

        Args:
            audio: 1-D (or ``(channels, samples)``) float arrays at any rate.
            sample_rates: One rate for all clips or one per clip.
            batch_size: Clips per ``generate`` call.

        Raises:
            ValueError: On an empty batch or a rate list of the wrong length.
            AudioError: On NaN/inf samples or an absurd rate.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        inputs = self._inputs(self.encode(audio, sample_rates))
        generation_config = self.generation_config()
        groups: dict[int, list[int]] = {}
        for index, embeds in enumerate(inputs):
            groups.setdefault(embeds.shape[0], []).append(index)
        captions: list[str] = [""] * len(inputs)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                embeds = torch.stack([inputs[i] for i in chunk])
                mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
                with contextlib.ExitStack() as stack:
                    if self.config.do_sample:
                        stack.enter_context(seeded(self.config.seed + chunk[0], self.device))
                    ids = self.model.llama_model.generate(
                        inputs_embeds=embeds,
                        attention_mask=mask,
                        generation_config=generation_config,
                        tokenizer=self.tokenizer,
                    )
                texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
                for i, text in zip(chunk, texts, strict=True):
                    captions[i] = self._clean(text)
        return captions

    # ----------------------------------------------------------------------- training

    def caption_loss(self, features: list[torch.Tensor], captions: list[str]) -> torch.Tensor:
        """Mean LM cross-entropy of the caption tokens given prompt and audio (teacher forcing).

        Args:
            features: Pooled encoder features per clip (:meth:`encode`).
            captions: The target caption per clip; ``end_sym`` is appended.

        Returns:
            A scalar with gradients flowing into ``llama_proj`` only.
        """
        if len(features) != len(captions):
            raise ValueError(f"{len(features)} clips but {len(captions)} captions")
        prefixes = self._inputs(features)
        embed = self.model.llama_model.get_input_embeddings()
        sequences, labels = [], []
        for prefix, text in zip(prefixes, captions, strict=True):
            ids = self.tokenizer(
                text + self.config.end_sym,
                add_special_tokens=False,
                truncation=True,
                max_length=self.config.max_txt_len,
            )["input_ids"]
            ids = torch.tensor(ids, dtype=torch.long, device=self.device)
            sequences.append(torch.cat([prefix, embed(ids)], dim=0))
            ignore = torch.full((prefix.shape[0],), -100, dtype=torch.long, device=self.device)
            labels.append(torch.cat([ignore, ids]))
        length = max(s.shape[0] for s in sequences)
        dim = sequences[0].shape[1]
        batch = len(sequences)
        embeds = sequences[0].new_zeros(batch, length, dim)
        mask = torch.zeros(batch, length, dtype=torch.long, device=self.device)
        targets = torch.full((batch, length), -100, dtype=torch.long, device=self.device)
        for row, (seq, lab) in enumerate(zip(sequences, labels, strict=True)):
            # Right padding: causal attention never lets real tokens see the padding.
            embeds[row, : seq.shape[0]] = seq
            mask[row, : seq.shape[0]] = 1
            targets[row, : lab.shape[0]] = lab
        outputs = self.model.llama_model(inputs_embeds=embeds, attention_mask=mask, labels=targets)
        return outputs.loss.float()

    # ----------------------------------------------------------------------- save and load

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``config.json``, ``projection.safetensors`` and ``tokenizer/``.

        An encoder or LM built from a config dict also gets its config (in ``config.json``)
        and its weights (``encoder.safetensors``, ``lm.safetensors``) saved.

        Args:
            directory: The folder; created if missing, existing files replaced.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        values = self.config.to_dict()
        save_state_file(self.model.llama_proj, directory / PROJECTION_NAME)
        if self.config.encoder is None:
            values["encoder_config"] = config_to_dict(self.model.audio_encoder.config)
            save_state_file(self.model.audio_encoder, directory / ENCODER_WEIGHTS)
        if self.config.lm is None:
            values["lm_config"] = config_to_dict(self.model.llama_model.config)
            save_state_file(self.model.llama_model, directory / LM_WEIGHTS)
        self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)
        values["tokenizer"] = None
        payload = {"kind": self.kind, "format_version": FORMAT_VERSION, **values}
        write_json(directory / CONFIG_NAME, payload, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> MusiLingoCaptioner:
        """Rebuilds a captioner written by :meth:`save_pretrained`.

        Encoder and LM given by folder are loaded from those folders again; ones built from
        configs are rebuilt and their saved weights loaded strictly.

        Raises:
            CheckpointError: If a file is missing or weights do not match (keys named).
            ConfigError: If the config is not a musilingo one or is invalid.
        """
        directory = Path(path)
        values, config_path = read_saved_config(directory, cls.kind)
        config = MusiLingoConfig.from_dict(values, os.fspath(config_path))
        tokenizer = _load_tokenizer(directory / TOKENIZER_DIR, "tokenizer")
        encoder = _load_encoder(config)
        if config.encoder is None:
            weights = directory / ENCODER_WEIGHTS
            load_state_strict(encoder, read_state_file(weights), weights)
        lm = _load_lm(config)
        if config.lm is None:
            weights = directory / LM_WEIGHTS
            load_state_strict(lm, read_state_file(weights), weights)
        model = MusiLingoModel(encoder, lm, config.hidden_layers, config.pool_frames)
        weights = directory / PROJECTION_NAME
        load_state_strict(model.llama_proj, read_state_file(weights), weights)
        return cls(model, tokenizer, config)
