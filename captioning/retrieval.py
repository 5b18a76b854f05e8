"""Text-to-audio and audio-to-text retrieval recall of a CLAP scorer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from captioning.base import ClapScorer


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Order of each row's candidates, best first, ties broken by the lower index."""
    return np.argsort(-scores, axis=1, kind="stable")


def _first_hit(order: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Rank (0-based) of the first candidate of each row marked in ``hit``."""
    marked = np.take_along_axis(hit, order, axis=1)
    return np.argmax(marked, axis=1)


def retrieval_metrics(
    audio_emb: np.ndarray, text_emb: np.ndarray, captions: Sequence[str]
) -> dict[str, float]:
    """Retrieval recall of paired embeddings (text ``i`` belongs to audio ``i``).

    Exact metrics count a hit only for the paired item; ties are broken by index, so an
    embedding that scores everything alike ranks item 0 first. Caption-level metrics
    accept any clip whose caption equals the query's (text to audio) and rank the
    distinct captions (audio to text): clips of one piece and variant share a caption, so
    the exact task is partly ambiguous.

    Args:
        audio_emb: ``(N, D)`` L2-normalised audio embeddings.
        text_emb: ``(N, D)`` L2-normalised text embeddings.
        captions: The ``N`` captions the text embeddings came from.

    Returns:
        ``t2a_r1``, ``t2a_r5``, ``a2t_r1``, ``a2t_r5``, ``caption_t2a_r1``,
        ``caption_t2a_r5``, ``caption_a2t_r1``, ``caption_a2t_r5``, ``count`` (N) and
        ``distinct_captions``.

    Raises:
        ValueError: If the shapes or counts do not match or N is 0.
    """
    audio_emb = np.asarray(audio_emb, dtype=np.float64)
    text_emb = np.asarray(text_emb, dtype=np.float64)
    n = len(captions)
    if n == 0 or audio_emb.shape[0] != n or text_emb.shape[0] != n:
        raise ValueError(
            f"need N > 0 matching rows, got {audio_emb.shape[0]} audio, {text_emb.shape[0]} "
            f"text embeddings and {n} captions"
        )
    sim = text_emb @ audio_emb.T  # (texts, audio)
    eye = np.eye(n, dtype=bool)
    t2a = _first_hit(_ranks(sim), eye)
    a2t = _first_hit(_ranks(sim.T), eye)

    distinct, caption_ids = np.unique(np.asarray(captions, dtype=object), return_inverse=True)
    same = caption_ids[:, None] == caption_ids[None, :]
    caption_t2a = _first_hit(_ranks(sim), same)
    # Audio to distinct captions: the first text of each caption stands for it.
    first = np.array([np.flatnonzero(caption_ids == c)[0] for c in range(len(distinct))])
    owns = caption_ids[:, None] == np.arange(len(distinct))[None, :]
    caption_a2t = _first_hit(_ranks(sim.T[:, first]), owns)

    def recall(rank: np.ndarray, k: int) -> float:
        return float(np.mean(rank < k))

    return {
        "t2a_r1": recall(t2a, 1),
        "t2a_r5": recall(t2a, 5),
        "a2t_r1": recall(a2t, 1),
        "a2t_r5": recall(a2t, 5),
        "caption_t2a_r1": recall(caption_t2a, 1),
        "caption_t2a_r5": recall(caption_t2a, 5),
        "caption_a2t_r1": recall(caption_a2t, 1),
        "caption_a2t_r5": recall(caption_a2t, 5),
        "count": n,
        "distinct_captions": len(distinct),
    }


def evaluate_retrieval(
    scorer: ClapScorer,
    clips_audio: Sequence[np.ndarray],
    captions: Sequence[str],
    sample_rates: int | Sequence[int] | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Text-to-audio and audio-to-text retrieval recall of any CLAP scorer.

    Args:
        scorer: The scorer.
        clips_audio: One clip per caption.
        captions: ``captions[i]`` describes ``clips_audio[i]``.
        sample_rates: Rate(s) of the clips; ``None`` means the scorer's own rate.
        batch_size: Passed to ``embed_audio``.

    Returns:
        See :func:`retrieval_metrics`.

    Raises:
        ValueError: If the counts differ or nothing is given.
    """
    if len(clips_audio) != len(captions):
        raise ValueError(f"{len(clips_audio)} clips but {len(captions)} captions")
    rates = scorer.sample_rate if sample_rates is None else sample_rates
    rates = rates if isinstance(rates, int) else list(rates)
    audio_emb = scorer.embed_audio(list(clips_audio), rates, batch_size=batch_size)
    text_emb = scorer.embed_text(list(captions))
    return retrieval_metrics(audio_emb, text_emb, list(captions))
