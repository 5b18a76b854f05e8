"""Training MusiLingo's projection (``llama_proj``) on (clip, caption) pairs."""

from __future__ import annotations

import numpy as np
import torch

from captioning.musilingo import MusiLingoCaptioner


def train_projection(
    captioner: MusiLingoCaptioner,
    audio_list: list[np.ndarray],
    captions: list[str],
    epochs: int = 1,
    lr: float = 1e-4,
    *,
    sample_rates: int | list[int],
    batch_size: int = 4,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """Trains ``llama_proj`` alone on (clip, caption) pairs with the LM loss; the rest stays frozen.

    The encoder runs once per clip (its features are cached), then every epoch visits the
    pairs in a seeded random order in batches, with AdamW on the projection's parameters.

    Args:
        captioner: The captioner whose projection is trained in place.
        audio_list: Clips (any length and rate).
        captions: One target caption per clip.
        epochs: Passes over the data.
        lr: AdamW learning rate.
        sample_rates: One rate for all clips or one per clip.
        batch_size: Pairs per optimisation step.
        weight_decay: AdamW weight decay.
        seed: Seed of the visiting order.

    Returns:
        The training loss of every step, in order.

    Raises:
        ValueError: On mismatched lengths, no data, or non-positive epochs/batch size.
    """
    if len(audio_list) != len(captions):
        raise ValueError(f"{len(audio_list)} clips but {len(captions)} captions")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    features = captioner.encode(audio_list, sample_rates)
    model = captioner.model
    params = list(model.llama_proj.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    model.train()
    try:
        for _ in range(epochs):
            order = rng.permutation(len(features))
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                loss = captioner.caption_loss(
                    [features[i] for i in batch], [captions[i] for i in batch]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        model.eval()
    return losses
