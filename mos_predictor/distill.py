"""DistilMOS-style layer-wise self-distillation for the SSL MOS model.

Fine-tuning an SSL encoder for MOS tends to forget what pretraining taught it and to
overfit a small rated set. DistilMOS (arXiv 2601.13700) adds an auxiliary task: from
chosen layers of the model being fine-tuned, predict the token ids that k-means assigns to
the same layers' hidden states of the frozen pretrained encoder.

Here the frozen copy (the *teacher*) is taken when the model is built, the k-means
centroids are fitted with :func:`fit_distillation_targets` on training audio and stored as
buffers (so they are saved with the model), and one linear head per layer predicts the
ids. The cross-entropy, weighted by ``config.distill_weight``, becomes ``aux_loss`` in
training mode; evaluation and ``predict`` skip the teacher.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mos_predictor.config import MosModelConfig
from qamdt.errors import ConfigError

if TYPE_CHECKING:
    from mos_predictor.ssl import SslMosModel


class LayerDistillation(nn.Module):
    """Frozen teacher encoder, per-layer k-means centroids and token-id heads.

    Args:
        encoder: The pretrained transformers encoder; a frozen copy becomes the teacher.
        config: Uses ``distill_layers`` and ``distill_clusters``.

    Raises:
        ConfigError: If a distilled layer is out of range.
    """

    centroids: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, encoder: nn.Module, config: MosModelConfig):
        super().__init__()
        n_layers = int(encoder.config.num_hidden_layers)
        self.layers = list(config.distill_layers)
        bad = [layer for layer in self.layers if not 0 <= layer <= n_layers]
        if bad:
            raise ConfigError(
                f"distill_layers {bad} out of range; the encoder has hidden states 0..{n_layers}"
            )
        self.teacher = copy.deepcopy(encoder)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        hidden = int(encoder.config.hidden_size)
        k = config.distill_clusters
        self.heads = nn.ModuleList(nn.Linear(hidden, k) for _ in self.layers)
        self.register_buffer("centroids", torch.zeros(len(self.layers), k, hidden))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def teacher_states(
        self, waveforms: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """The teacher's hidden states at the distilled layers.

        Args:
            waveforms: ``(B, S)`` normalised 16 kHz audio.
            attention_mask: The encoder's sample-level mask, or ``None``.

        Returns:
            One ``(B, T, H)`` tensor per distilled layer.
        """
        states = self.teacher(
            waveforms, attention_mask=attention_mask, output_hidden_states=True
        ).hidden_states
        return [states[layer] for layer in self.layers]

    @torch.no_grad()
    def token_ids(self, teacher_states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Nearest-centroid ids of the teacher's states.

        Args:
            teacher_states: One ``(B, T, H)`` tensor per distilled layer.

        Returns:
            One ``(B, T)`` long tensor per distilled layer.
        """
        ids = []
        for i, states in enumerate(teacher_states):
            centroids = self.centroids[i].to(states.dtype).unsqueeze(0)
            ids.append(torch.cdist(states, centroids.expand(states.shape[0], -1, -1)).argmin(-1))
        return ids

    def loss(
        self,
        student_states: Sequence[torch.Tensor],
        teacher_states: Sequence[torch.Tensor],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Mean cross-entropy of the heads' token-id predictions over layers and frames.

        Args:
            student_states: All hidden states of the model being trained.
            teacher_states: The teacher's states at the distilled layers.
            mask: ``(B, T)`` valid frames, or ``None``.

        Returns:
            The scalar loss.

        Raises:
            RuntimeError: If the centroids have not been fitted.
        """
        if not bool(self.fitted):
            raise RuntimeError(
                "distillation targets are not fitted; call "
                "mos_predictor.distill.fit_distillation_targets(model, waves) before training"
            )
        losses = []
        for head, layer, ids in zip(
            self.heads, self.layers, self.token_ids(teacher_states), strict=True
        ):
            logits = head(student_states[layer])
            ce = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
            if mask is None:
                losses.append(ce.mean())
            else:
                weight = mask.to(ce.dtype)
                losses.append((ce * weight).sum() / weight.sum().clamp_min(1.0))
        return torch.stack(losses).mean()


@torch.no_grad()
def fit_distillation_targets(
    model: SslMosModel,
    waves: Sequence[np.ndarray],
    sample_rate: int | None = None,
    batch_size: int = 8,
    max_frames: int = 50000,
    seed: int = 0,
) -> dict[int, float]:
    """Fits the k-means token vocabularies of the distilled layers on training audio.

    The teacher encodes every window of every clip (windows as in ``predict``); up to
    ``max_frames`` frames per layer, drawn at random, go into scikit-learn's
    ``MiniBatchKMeans``, whose centroids are stored in the model.

    Args:
        model: An ``ssl`` model built with ``distill_layers``.
        waves: Training clips, 1-D float arrays.
        sample_rate: Their rate; ``None`` means the model's.
        batch_size: Windows per teacher pass.
        max_frames: Frames per layer given to k-means.
        seed: Seed of the frame draw and of k-means.

    Returns:
        The k-means inertia (mean squared distance to the centroid) per layer.

    Raises:
        ValueError: If the model has no distillation or the audio gives fewer frames than
            clusters.
    """
    from sklearn.cluster import MiniBatchKMeans

    distill = getattr(model, "distill", None)
    if distill is None:
        raise ValueError("the model has no distillation (set distill_layers in its config)")
    if len(waves) == 0:
        raise ValueError("no audio given to fit the distillation targets")
    rate = model.config.sample_rate if sample_rate is None else sample_rate
    device = model.device
    windows, lengths = [], []
    for index, wave in enumerate(waves):
        w, n = model._windows(model._prepare_clip(wave, rate, index))
        windows.extend(w)
        lengths.extend(n)
    features: list[list[np.ndarray]] = [[] for _ in distill.layers]
    for start in range(0, len(windows), batch_size):
        batch = torch.from_numpy(np.stack(windows[start : start + batch_size])).to(device)
        valid = torch.tensor(lengths[start : start + batch_size], device=device)
        states = distill.teacher_states(batch, model.encoder.attention_mask(batch, valid))
        frames = model.encoder.frame_lengths(valid, batch.shape[1], states[0].shape[1])
        for i, layer_states in enumerate(states):
            for row, count in zip(layer_states, frames.tolist(), strict=True):
                features[i].append(row[:count].float().cpu().numpy())
    rng = np.random.default_rng(seed)
    k = model.config.distill_clusters
    inertia = {}
    for i, layer in enumerate(distill.layers):
        data = np.concatenate(features[i])
        if data.shape[0] < k:
            raise ValueError(
                f"layer {layer}: {data.shape[0]} frames are fewer than distill_clusters={k}"
            )
        if data.shape[0] > max_frames:
            data = data[rng.choice(data.shape[0], max_frames, replace=False)]
        kmeans = MiniBatchKMeans(
            n_clusters=k, random_state=seed, n_init=3, batch_size=max(1024, 4 * k)
        ).fit(data)
        distill.centroids[i].copy_(torch.from_numpy(kmeans.cluster_centers_).float())
        inertia[layer] = float(kmeans.inertia_ / data.shape[0])
    distill.fitted.fill_(True)
    return inertia
