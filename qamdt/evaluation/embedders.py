"""Offline audio features for the distribution metrics, from the project's own models.

FAD and KL/IS are usually computed on VGGish embeddings and PANNs class probabilities,
neither of which can be loaded offline here. These extractors stand in for them with the
models this project trains itself, so the numbers are comparable between runs of this
project but NOT with published FAD/KL/IS (those need ``audioldm_eval_backend``):

* :class:`ClapAudioEmbedder`: clip embeddings from a CLAP scorer's audio tower, in place
  of VGGish, for the Frechet distance.
* :class:`TaggerClassifier`: class probabilities from the embedded captioner's tagger
  heads, in place of PANNs' AudioSet classes, for KL and the inception score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qamdt.audio_io import prepare_clips
from qamdt.errors import ConfigError

FEATURE_KINDS = ("frames", "pooled", "projected")
# Single-label heads to take for the softmax KL and the inception score, first present wins.
CLASS_HEAD_ORDER = ("ensemble", "style", "metre", "tempo", "mode")
MULTI_LABEL_HEAD = "instruments"


class ClapAudioEmbedder:
    """Frechet-distance samples from a CLAP scorer's audio tower (not VGGish).

    For the embedded CLAP model the default is ``"frames"``: the audio tower's per-time-step
    features (``audio_width`` values, one per 16 mel hops, 0.19 s), the input of its
    statistics pooling, before the projection into the shared text-audio space. Like FAD,
    which pools VGGish's 0.96 s frame embeddings of every clip, a set's statistics come from
    all the frames of its clips: a 5 s clip gives 27 samples, so 20 clips estimate a
    covariance of ``audio_width`` dimensions from 540 samples instead of from 20 clip
    vectors (docs/evaluation.md compares the two on the demo's models).
    ``"pooled"`` gives one vector per clip: the statistics pooling (mean and standard
    deviation over time of the frame features, ``2 x audio_width`` values) averaged over
    the clip's 5 s windows. The projection is a linear map trained only to agree with
    captions, so it can only drop information (quality, timbre detail that captions never
    mention); ``"projected"`` gives the normalised joint-space embeddings of
    :meth:`ClapScorer.embed_audio`, the only choice for other CLAP kinds.

    Args:
        clap_scorer: Any :class:`captioning.base.ClapScorer`.
        features: ``"frames"`` or ``"pooled"`` (embedded kind only), ``"projected"``, or
            ``None`` for frames where available and projected otherwise.
        batch_size: Windows per forward pass.

    Raises:
        ConfigError: On an unknown feature kind, or ``"frames"`` / ``"pooled"`` for a
            scorer that is not the embedded kind.
    """

    def __init__(self, clap_scorer, features: str | None = None, batch_size: int = 8):
        from captioning.embedded_clap import EmbeddedClapScorer

        tower_ok = isinstance(clap_scorer, EmbeddedClapScorer)
        if features is None:
            features = "frames" if tower_ok else "projected"
        if features not in FEATURE_KINDS:
            raise ConfigError(f"Frechet features must be one of {FEATURE_KINDS}, got {features!r}")
        if features != "projected" and not tower_ok:
            raise ConfigError(
                f"{features} CLAP features need the embedded CLAP scorer, got kind "
                f"{getattr(clap_scorer, 'kind', type(clap_scorer).__name__)!r}; "
                "use features='projected'"
            )
        self.scorer = clap_scorer
        self.features = features
        self.batch_size = int(batch_size)

    @property
    def description(self) -> str:
        """One line saying what the embedding is, for reports."""
        kind = getattr(self.scorer, "kind", type(self.scorer).__name__)
        where = {
            "frames": "audio-tower frame features (16 mel hops each) before the pooling",
            "pooled": "audio-tower statistics pooling before the projection, one per clip",
            "projected": "projected, L2-normalised joint-space embedding, one per clip",
        }[self.features]
        return f"CLAP ({kind}) audio embedding, {where}; project-trained, not VGGish"

    def samples(
        self, waves: Sequence[np.ndarray], sample_rates: int | Sequence[int]
    ) -> list[np.ndarray]:
        """The Frechet distance's samples of each clip (any rate, any length).

        Args:
            waves: Mono or ``(channels, samples)`` float arrays.
            sample_rates: One rate for all clips or one per clip.

        Returns:
            One ``(n_i, D)`` float32 array per clip: its frames, or its one clip vector.
        """
        if self.features == "frames":
            return self._tower_features(list(waves), _rates(sample_rates), frames=True)
        return list(self.embed(waves, sample_rates)[:, None, :])

    def embed(self, waves: Sequence[np.ndarray], sample_rates: int | Sequence[int]) -> np.ndarray:
        """Embeds a batch of clips (any rate, any length).

        Args:
            waves: Mono or ``(channels, samples)`` float arrays.
            sample_rates: One rate for all clips or one per clip.

        Returns:
            ``(N, D)`` float32 embeddings.

        Raises:
            ConfigError: For ``"frames"``, which has no single vector per clip
                (:meth:`samples` gives its frames).
        """
        if self.features == "projected":
            return self.scorer.embed_audio(list(waves), _rates(sample_rates), self.batch_size)
        if self.features == "frames":
            raise ConfigError("frame features have no vector per clip; use samples()")
        return np.stack(self._tower_features(list(waves), _rates(sample_rates), frames=False))

    @torch.no_grad()
    def _tower_features(
        self, waves: list[np.ndarray], rates: int | list[int], frames: bool
    ) -> list[np.ndarray]:
        """Each clip's frame features (all its windows' frames) or its mean pooled vector."""
        scorer = self.scorer
        tower = scorer.heads.audio
        prepared = prepare_clips(waves, rates, scorer.sample_rate)
        windows: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for owner, wave in enumerate(prepared):
            for window in scorer.mel_windows(scorer.log_mel(wave)):
                windows.setdefault(window.shape[1], []).append((owner, window))
        per_clip: list[list[torch.Tensor]] = [[] for _ in prepared]
        captured: list[torch.Tensor] = []
        # Hooks read the frame features (the projection's output) or the pooled vector
        # (the head's input) without repeating the tower's internals here.
        if frames:
            handle = tower.frame_proj.register_forward_hook(
                lambda _, args, output: captured.append(output)
            )
        else:
            handle = tower.head.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        was_training = tower.training
        tower.eval()
        try:
            for group in windows.values():
                for start in range(0, len(group), self.batch_size):
                    part = group[start : start + self.batch_size]
                    captured.clear()
                    tower(torch.stack([w for _, w in part]))
                    for (owner, _), features in zip(part, captured[0].float().cpu(), strict=True):
                        per_clip[owner].append(features)
        finally:
            handle.remove()
            tower.train(was_training)
        if frames:
            return [torch.cat(parts).numpy().astype(np.float32) for parts in per_clip]
        return [torch.stack(parts).mean(0).numpy().astype(np.float32) for parts in per_clip]


class TaggerClassifier:
    """Class probabilities from the embedded captioner's tagger (not PANNs).

    The tagger (``captioning.embedded_captioner.TagNet``) has one head per tag field; a
    clip's logits are averaged over its windows, then each head is turned into
    probabilities: a sigmoid per class for the multi-label ``instruments`` head, a
    softmax over the classes of each single-label head (``ensemble``, ``tempo``,
    ``mode``, ``metre``, ``style``). The BPM regression head is left out.

    The softmax-form KL and the inception score need one distribution per clip: they use
    :attr:`class_head`, by default ``ensemble`` (the ensemble pattern: solo, string
    quartet, organ, ... - the largest single-label vocabulary, and instrumentation is the
    strongest acoustic cue, as AudioSet's instrument classes are for PANNs), falling back
    to ``style``, ``metre``, ``tempo``, ``mode``. The multi-label instrument
    probabilities feed the sigmoid-form KL.

    Args:
        captioner: An embedded captioner (``captioning.embedded_captioner``).
        head: The single-label head for KL/IS; ``None`` picks as above.
        batch_size: Windows per forward pass.

    Raises:
        ConfigError: If the captioner is not the embedded kind, or ``head`` is not one
            of its single-label heads.
    """

    def __init__(self, captioner, head: str | None = None, batch_size: int = 8):
        from captioning.embedded_captioner import EmbeddedCaptioner
        from captioning.tagger_model import CLASS_FIELDS

        if not isinstance(captioner, EmbeddedCaptioner):
            kind = getattr(captioner, "kind", type(captioner).__name__)
            raise ConfigError(
                f"the tagger metrics (KL, IS) need the embedded captioner, whose tag heads "
                f"give class probabilities; got a captioner of kind {kind!r}"
            )
        vocab = captioner.config.vocab
        self.captioner = captioner
        self.batch_size = int(batch_size)
        self.heads = [h for h in (MULTI_LABEL_HEAD, *CLASS_FIELDS) if vocab.get(h)]
        single = [h for h in CLASS_HEAD_ORDER if vocab.get(h)]
        if head is None:
            if not single:
                raise ConfigError("the captioner has no single-label head for KL and IS")
            head = single[0]
        elif head not in single:
            raise ConfigError(f"head must be one of the captioner's single-label heads {single}")
        self.class_head = head

    def labels(self, head: str) -> list[str]:
        """Class names of one head, in probability-column order."""
        return list(self.captioner.config.vocab[head])

    @property
    def description(self) -> str:
        """One line saying what the probabilities are, for reports."""
        return (
            f"embedded captioner tagger, '{self.class_head}' head "
            f"({len(self.labels(self.class_head))} classes); project-trained, not PANNs"
        )

    def head_probabilities(
        self, waves: Sequence[np.ndarray], sample_rates: int | Sequence[int]
    ) -> dict[str, np.ndarray]:
        """Probabilities of every head for a batch of clips (any rate, any length).

        Returns:
            Head name to ``(N, classes)`` float64: sigmoid probabilities for
            ``instruments``, softmax rows (summing to 1) for the other heads.
        """
        captioner = self.captioner
        prepared = prepare_clips(list(waves), _rates(sample_rates), captioner.sample_rate)
        logits = captioner.logits_from_mels(
            [captioner.log_mel(w) for w in prepared], self.batch_size
        )
        out = {}
        for head in self.heads:
            values = np.stack([np.asarray(clip[head], dtype=np.float64) for clip in logits])
            out[head] = _sigmoid(values) if head == MULTI_LABEL_HEAD else _softmax(values)
        return out

    def probabilities(
        self, waves: Sequence[np.ndarray], sample_rates: int | Sequence[int]
    ) -> np.ndarray:
        """Every head's probabilities side by side, ``(N, K)`` in :attr:`heads` order."""
        per_head = self.head_probabilities(waves, sample_rates)
        return np.concatenate([per_head[h] for h in self.heads], axis=1)

    def class_probabilities(
        self, waves: Sequence[np.ndarray], sample_rates: int | Sequence[int]
    ) -> np.ndarray:
        """The :attr:`class_head` distribution of each clip, ``(N, classes)``."""
        return self.head_probabilities(waves, sample_rates)[self.class_head]


def _rates(sample_rates: int | Sequence[int]) -> int | list[int]:
    if isinstance(sample_rates, (int, np.integer)):
        return int(sample_rates)
    return [int(r) for r in sample_rates]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))
