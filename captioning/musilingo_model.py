"""MusiLingo's settings (:class:`MusiLingoConfig`) and network (:class:`MusiLingoModel`).

A frozen audio encoder and a frozen causal LM joined by one trainable linear layer; see
:mod:`captioning.musilingo` for the pipeline, loading and captioning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from qamdt.config import ConfigBase
from qamdt.errors import ConfigError

AUDIO_PLACEHOLDER = "<AudioHere>"
DEFAULT_PROMPT = "###Human: <Audio><AudioHere></Audio> {instruction} ###Assistant: "
DEFAULT_INSTRUCTION = "Please give a caption to the music."
LM_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass
class MusiLingoConfig(ConfigBase):
    """Settings of a MusiLingo captioner (all JSON-serialisable).

    Attributes:
        encoder: Local folder of the audio encoder (MERT-v1-330M).
        encoder_config: Or a transformers config dict (with ``model_type``) of a randomly
            initialised encoder.
        lm: Local folder of the causal LM (Vicuna-7B).
        lm_config: Or a config dict of a randomly initialised LM.
        tokenizer: Tokenizer folder; None means ``lm``.
        trust_remote_code: Let transformers run the encoder/LM folders' own code (MERT).
        encoder_sample_rate: The encoder's rate; None reads ``preprocessor_config.json``
            (``sampling_rate``) from the encoder folder, else 16000.
        do_normalize: Zero-mean/unit-variance input normalisation; None reads the
            preprocessor config, else True.
        hidden_layers: ``"all"`` (mean of every hidden state, MusiLingo), ``"last"`` or a list
            of hidden-state indices to average.
        pool_frames: Frames averaged into one audio token (325 in MusiLingo).
        max_seconds: Longer clips are cropped to their central ``max_seconds``.
        min_seconds: Shorter clips are zero-padded to this (the encoder's convolutions need
            some samples).
        prompt_template: Text around the audio tokens; must hold ``<AudioHere>`` and may hold
            ``{instruction}``.
        instruction: Replaces ``{instruction}`` in the template.
        add_bos: Start the sequence with the tokenizer's BOS token (MusiLingo does).
        end_sym: Appended to training captions; generated text is cut at it.
        max_txt_len: Longest training caption in tokens (``end_sym`` included).
        max_new_tokens: Longest generated caption in tokens.
        num_beams: Beam width; 1 is greedy (or sampling).
        do_sample: Sample instead of greedy/beam decoding.
        temperature: Sampling temperature.
        top_p: Nucleus mass when sampling.
        repetition_penalty: 1.0 is none.
        seed: Seed of the sampler, for reproducible captions.
        lm_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for the LM (the projection
            stays float32).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        projection_checkpoint: The released MusiLingo checkpoint the projection came from, if
            any (provenance).
    """

    encoder: str | None = None
    encoder_config: dict[str, Any] | None = None
    lm: str | None = None
    lm_config: dict[str, Any] | None = None
    tokenizer: str | None = None
    trust_remote_code: bool = False
    encoder_sample_rate: int | None = None
    do_normalize: bool | None = None
    hidden_layers: str | list[int] = "all"
    pool_frames: int = 325
    max_seconds: float = 30.0
    min_seconds: float = 1.0
    prompt_template: str = DEFAULT_PROMPT
    instruction: str = DEFAULT_INSTRUCTION
    add_bos: bool = True
    end_sym: str = "###"
    max_txt_len: int = 160
    max_new_tokens: int = 128
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    lm_dtype: str = "float32"
    device: str = "cpu"
    projection_checkpoint: str | None = None

    config_where = "<config>"
    config_noun = "musilingo setting"
    config_ignore = ("kind", "format_version")

    def __post_init__(self) -> None:
        if self.encoder is None and self.encoder_config is None:
            raise ConfigError("encoder: set a local encoder folder or encoder_config")
        if self.lm is None and self.lm_config is None:
            raise ConfigError("lm: set a local LM folder or lm_config")
        if AUDIO_PLACEHOLDER not in self.prompt_template:
            raise ConfigError(f"prompt_template: must contain {AUDIO_PLACEHOLDER!r}")
        if self.prompt_template.count(AUDIO_PLACEHOLDER) != 1:
            raise ConfigError(f"prompt_template: {AUDIO_PLACEHOLDER!r} must appear once")
        if isinstance(self.hidden_layers, str):
            if self.hidden_layers not in ("all", "last"):
                raise ConfigError(
                    f"hidden_layers: {self.hidden_layers!r} is not 'all', 'last' or a list"
                )
        elif not self.hidden_layers or not all(isinstance(i, int) for i in self.hidden_layers):
            raise ConfigError("hidden_layers: a list must hold at least one integer index")
        for name in ("pool_frames", "max_txt_len", "max_new_tokens", "num_beams"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ConfigError("min_seconds/max_seconds: need 0 < min_seconds <= max_seconds")
        if self.lm_dtype not in LM_DTYPES:
            raise ConfigError(f"lm_dtype: {self.lm_dtype!r} is not one of {sorted(LM_DTYPES)}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature must be > 0 and top_p in (0, 1]")

    def prompt_parts(self) -> tuple[str, str]:
        """The prompt text before and after the audio tokens."""
        prompt = self.prompt_template.replace("{instruction}", self.instruction)
        before, after = prompt.split(AUDIO_PLACEHOLDER)
        return before, after


def pool_time(features: torch.Tensor, window: int) -> torch.Tensor:
    """Means over consecutive windows of ``window`` frames, a partial last window included.

    Args:
        features: ``(B, T, D)``.
        window: Frames per output step.

    Returns:
        ``(B, ceil(T / window), D)``.
    """
    batch, frames, dim = features.shape
    full = frames // window * window
    parts = []
    if full:
        parts.append(features[:, :full].reshape(batch, full // window, window, dim).mean(2))
    if frames > full:
        parts.append(features[:, full:].mean(1, keepdim=True))
    return torch.cat(parts, dim=1)


class MusiLingoModel(nn.Module):
    """``audio_encoder`` and ``llama_model`` (frozen) joined by ``llama_proj`` (trainable).

    The names are those of MusiLingo's model class, so its checkpoints' ``llama_proj.*`` keys
    apply as they are.

    Args:
        audio_encoder: The transformers audio encoder.
        llama_model: The transformers causal LM.
        hidden_layers: See :class:`MusiLingoConfig`.
        pool_frames: See :class:`MusiLingoConfig`.
    """

    def __init__(
        self,
        audio_encoder: nn.Module,
        llama_model: nn.Module,
        hidden_layers: str | Sequence[int] = "all",
        pool_frames: int = 325,
    ):
        super().__init__()
        self.audio_encoder = audio_encoder
        self.llama_model = llama_model
        self.hidden_layers = hidden_layers
        self.pool_frames = pool_frames
        self.llama_proj = nn.Linear(
            audio_encoder.config.hidden_size, llama_model.get_input_embeddings().embedding_dim
        )
        for module in (self.audio_encoder, self.llama_model):
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> MusiLingoModel:
        """Only the projection switches mode; the frozen encoder and LM stay in eval mode."""
        self.training = mode
        self.llama_proj.train(mode)
        return self

    @torch.no_grad()
    def encode_audio(self, input_values: torch.Tensor) -> torch.Tensor:
        """``(B, samples)`` normalised audio -> ``(B, T', D_enc)`` pooled encoder states."""
        outputs = self.audio_encoder(input_values=input_values, output_hidden_states=True)
        if self.hidden_layers == "last":
            states = outputs.last_hidden_state
        else:
            hidden = outputs.hidden_states
            chosen = (
                hidden if self.hidden_layers == "all" else [hidden[i] for i in self.hidden_layers]
            )
            states = torch.stack(list(chosen)).mean(0)
        return pool_time(states.float(), self.pool_frames)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled encoder states -> audio token embeddings in the LM's dtype."""
        projected = self.llama_proj(features.to(self.llama_proj.weight.dtype))
        return projected.to(self.llama_model.get_input_embeddings().weight.dtype)
