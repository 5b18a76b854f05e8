"""Distribution metrics of generated audio: Frechet distance, paired KL, inception score.

The Frechet distance also comes with a jackknife standard error over clips
(:func:`frechet_jackknife`).

The formulas follow the tools the field reports numbers with, so that a score computed
here on the features of a given network equals theirs on the same features:

* :func:`frechet_distance` is FAD's (``frechet_audio_distance`` / audioldm_eval, adapted
  from pytorch-fid): ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))`` with
  ``scipy.linalg.sqrtm``; when the product's square root is not finite, ``eps`` is added
  to both diagonals and it is taken again; an imaginary part whose diagonal exceeds
  ``1e-3`` is an error, a smaller one is dropped. Covariances are ``np.cov`` (``N - 1``).
* :func:`kl_divergence_paired` is audioldm_eval's ``calculate_kl`` on probabilities
  instead of logits: ``KL(reference || generated)`` of row-paired clips, summed over the
  classes and averaged over the pairs, with ``EPS = 1e-6`` added to the generated
  probabilities inside the log only.
* :func:`inception_score` is audioldm_eval's / torch-fidelity's ``calculate_isc``:
  ``exp(E_x KL(p(y|x) || p(y)))`` per split of a seeded shuffle (``RandomState(2020)``),
  the mean and (population) standard deviation over the splits.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg
from scipy.special import xlogy

KL_EPS = 1e-6
KL_KINDS = ("softmax", "sigmoid", "bernoulli")
IS_SEED = 2020


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """Frechet distance of two Gaussians, exactly as FAD and audioldm_eval compute it.

    ``d^2 = |mu1 - mu2|^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr(sqrtm(sigma1 @ sigma2))``.

    Args:
        mu1: Mean of the first set, ``(D,)``.
        sigma1: Covariance of the first set, ``(D, D)``.
        mu2: Mean of the second set, ``(D,)``.
        sigma2: Covariance of the second set, ``(D, D)``.
        eps: Added to both diagonals when the product's square root is not finite
            (a near-singular product).

    Returns:
        The squared distance (FAD reports this value, not its square root).

    Raises:
        ValueError: On mismatched shapes, or a square root whose diagonal has an
            imaginary part above ``1e-3`` (numerically unusable statistics).
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} and {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"covariances {sigma1.shape} and {sigma2.shape} do not fit means of {mu1.shape}"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"Frechet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} "
                "in the covariance square root"
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    # A singular product is expected here and handled by the caller's eps fallback.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return linalg.sqrtm(matrix)


def embedding_statistics(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a set of embeddings, as FAD computes them.

    Args:
        embeddings: ``(N, D)`` with ``N >= 2``.

    Returns:
        ``(mu, sigma)``: the ``(D,)`` mean and the ``(D, D)`` covariance (``np.cov``,
        normalised by ``N - 1``).

    Raises:
        ValueError: If the array is not 2-D, has fewer than two rows, or is not finite.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {embeddings.shape}")
    if embeddings.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 embeddings, got {embeddings.shape[0]}")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return embeddings.mean(axis=0), np.atleast_2d(np.cov(embeddings, rowvar=False))


def frechet_distance_of(emb_a: np.ndarray, emb_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between two sets of embeddings (``(N, D)`` and ``(M, D)``).

    Like FAD, the value is biased upwards for small sets and depends on their size:
    compare only scores computed on sets of similar size.
    """
    mu_a, sigma_a = embedding_statistics(emb_a)
    mu_b, sigma_b = embedding_statistics(emb_b)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b, eps=eps)


def frechet_jackknife(
    samples: list[np.ndarray], reference: np.ndarray, eps: float = 1e-6
) -> tuple[float, float]:
    """Frechet distance of a set of clips to a reference, and its jackknife standard error.

    The set is drawn anew by leaving out one clip at a time (with all its samples: frames
    of one clip are not independent), the reference stays fixed. The standard error is
    ``sqrt((n - 1) / n * sum_i (d_i - mean(d))^2)`` over the ``n`` leave-one-out distances
    ``d_i``: how much the distance moves with the draw of clips (of prompts, for generated
    sets), the yardstick for a difference between two sets' distances.

    Args:
        samples: One ``(n_i, D)`` array per clip, at least 3 clips.
        reference: ``(M, D)`` reference samples.
        eps: As in :func:`frechet_distance`.

    Returns:
        ``(distance, standard_error)``; the distance is that of all clips.

    Raises:
        ValueError: With fewer than 3 clips, or as :func:`frechet_distance_of`.
    """
    if len(samples) < 3:
        raise ValueError(f"a jackknife standard error needs at least 3 clips, got {len(samples)}")
    mu_ref, sigma_ref = embedding_statistics(reference)
    mu, sigma = embedding_statistics(np.concatenate(samples))
    full = frechet_distance(mu, sigma, mu_ref, sigma_ref, eps=eps)
    # Each leave-one-out set's statistics are the whole set's sums less one clip's, and the
    # trace of the square root is taken in its symmetric form, Tr sqrtm(R S R) with
    # R = sqrtm(sigma_ref) (the same value for covariance matrices, to rounding): one
    # eigvalsh each, six times faster than scipy's sqrtm at 256 dims.
    clips = [np.asarray(clip, dtype=np.float64) for clip in samples]
    counts = np.array([len(clip) for clip in clips])
    sums = np.stack([clip.sum(axis=0) for clip in clips])
    total_count, total_sum = counts.sum(), sums.sum(axis=0)
    # One clip's outer products are taken again when it is left out: D x D memory, not N x.
    total_outer = sum(clip.T @ clip for clip in clips)
    values, vectors = np.linalg.eigh(sigma_ref)
    root_ref = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    trace_ref = np.trace(sigma_ref)

    def left_out(index: int) -> float:
        count = total_count - counts[index]
        mean = (total_sum - sums[index]) / count
        outer = total_outer - clips[index].T @ clips[index]
        cov = (outer - count * np.outer(mean, mean)) / (count - 1)
        eigen = np.linalg.eigvalsh(root_ref @ cov @ root_ref)
        diff = mean - mu_ref
        root_trace = np.sqrt(np.clip(eigen, 0, None)).sum()
        return diff.dot(diff) + np.trace(cov) + trace_ref - 2 * root_trace

    distances = np.array([left_out(i) for i in range(len(clips))])
    spread = np.sum((distances - distances.mean()) ** 2)
    return full, float(np.sqrt((len(clips) - 1) / len(clips) * spread))


def kl_divergence_paired(
    ref_probs: np.ndarray, gen_probs: np.ndarray, kind: str = "softmax", eps: float = KL_EPS
) -> float:
    """Mean ``KL(reference || generated)`` over row-paired clips.

    Row ``i`` of both arrays must describe the same item (audioldm_eval pairs by file
    name). The three forms:

    * ``"softmax"`` (audioldm_eval's ``KL``): rows are distributions over one set of
      classes; ``mean_i sum_k p_ik (log p_ik - log(q_ik + eps))``.
    * ``"sigmoid"`` (audioldm_eval's ``KL_Sigmoid``): rows are independent per-class
      probabilities and the same expression is used unchanged, i.e. only the "present"
      term of each class. This is what audioldm_eval computes (``F.kl_div`` on sigmoid
      outputs), kept as-is so scores stay comparable with published ones; it is not a
      true divergence and can be negative.
    * ``"bernoulli"``: the proper per-class Bernoulli divergence, averaged over classes,
      ``mean_i mean_k [p log(p / (q+eps)) + (1-p) log((1-p) / (1-q+eps))]``; zero only
      for identical rows and never negative (up to ``eps``).

    Args:
        ref_probs: ``(N, K)`` probabilities of the reference clips (``p``).
        gen_probs: ``(N, K)`` probabilities of the paired generated clips (``q``).
        kind: ``"softmax"``, ``"sigmoid"`` or ``"bernoulli"``.
        eps: Added to the generated probabilities inside the log (audioldm_eval: 1e-6).

    Returns:
        The mean over the pairs (a float).

    Raises:
        ValueError: On an unknown kind, mismatched or empty arrays, or probabilities
            outside [0, 1].
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind must be one of {KL_KINDS}, got {kind!r}")
    p = np.asarray(ref_probs, dtype=np.float64)
    q = np.asarray(gen_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != q.shape or p.shape[0] == 0:
        raise ValueError(
            f"need two non-empty (N, K) arrays of the same shape, got {p.shape} and {q.shape}"
        )
    for name, values in (("ref_probs", p), ("gen_probs", q)):
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError(f"{name} must hold probabilities in [0, 1]")
    if kind == "bernoulli":
        present = xlogy(p, p) - xlogy(p, q + eps)
        absent = xlogy(1 - p, 1 - p) - xlogy(1 - p, 1 - q + eps)
        return float(np.mean(present + absent))
    # xlogy gives 0 * log 0 = 0, as F.kl_div does for zero targets.
    return float(np.sum(xlogy(p, p) - xlogy(p, q + eps)) / p.shape[0])


def inception_score(
    probs: np.ndarray, splits: int = 10, shuffle: bool = True, seed: int = IS_SEED
) -> tuple[float, float]:
    """Inception score ``exp(E_x KL(p(y|x) || p(y)))``, mean and std over splits.

    As audioldm_eval's ``calculate_isc`` (and torch-fidelity): the rows are shuffled with
    ``np.random.RandomState(seed)``, cut into ``splits`` chunks at ``i * N // splits``,
    ``p(y)`` is each chunk's mean row, and the result is the mean and population standard
    deviation of the per-chunk scores. It lies in ``[1, K]``: 1 when every clip gets the
    same prediction, ``K`` when the clips spread evenly over ``K`` confident classes.

    Args:
        probs: ``(N, K)`` class distributions (rows summing to 1), not logits.
        splits: Number of chunks; at most ``N``.
        shuffle: Shuffle the rows before splitting, as audioldm_eval does.
        seed: Seed of the shuffle (audioldm_eval: 2020).

    Returns:
        ``(mean, std)``.

    Raises:
        ValueError: On a non-2-D or empty array, rows that are not distributions, or
            ``splits`` outside ``1..N``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty (N, K) array, got shape {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0 or not np.allclose(p.sum(axis=1), 1, atol=1e-4):
        raise ValueError("each row of probs must be a probability distribution")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be within 1..{n} (the number of rows), got {splits}")
    if shuffle:
        p = p[np.random.RandomState(seed).permutation(n)]
    scores = []
    for i in range(splits):
        chunk = p[i * n // splits : (i + 1) * n // splits]
        marginal = chunk.mean(axis=0, keepdims=True)
        kl = (xlogy(chunk, chunk) - xlogy(chunk, marginal)).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
