"""Scores a folder of generated music against a reference set, overall and per quality level.

The generated and reference clips are read by :mod:`qamdt.evaluation.inputs`.

Metrics, for all clips and for each quality level (the quality sweep of the paper's
Fig. 3):

* ``frechet``: Frechet distance of the generated set to the reference set
  (:mod:`qamdt.evaluation.metrics`) on the CLAP audio features of
  :class:`~qamdt.evaluation.embedders.ClapAudioEmbedder` (by default every clip's frame
  features, as FAD pools VGGish frames), and ``frechet_se``, its jackknife standard error
  over the set's clips (sets of 3 clips or more);
* ``kl`` (softmax form, on the tagger's single-label head) and ``kl_sigmoid``
  (audioldm_eval's sigmoid form, on the multi-label instrument head), paired clips only;
  ``is`` / ``is_std``: inception score of the single-label head, over ``is_splits``
  shuffled splits (10 as audioldm_eval, fewer for sets under 100 clips so that each split
  keeps at least 10 clips);
* ``clap``: mean cosine of each clip with its own prompt (no quality prefix, as the paper
  scores it), and ``clap_shuffled``: the same against seeded derangements of the distinct
  prompts (each prompt swapped for another one), averaged over ``SHUFFLES`` of them, a
  chance-level control;
* ``pmos_mean`` / ``pmos_std`` (population std): the MOS model's overall-quality score.

With ``backend="audioldm-eval"`` the Frechet distance, KL and IS come from
``audioldm_eval`` (VGGish, PANNs) instead; CLAP and p-MOS stay as above.
Files that cannot be read are listed in ``failures`` and skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from qamdt.errors import ConfigError, QamdtError
from qamdt.evaluation.inputs import (
    GeneratedClip,
    load_generated,
    load_reference,
    read_generated,
    read_reference,
)
from qamdt.evaluation.metrics import (
    frechet_distance_of,
    frechet_jackknife,
    inception_score,
    kl_divergence_paired,
)

BACKENDS = ("embedded", "audioldm-eval")
EMBEDDED_BACKEND = "embedded (project-trained CLAP audio tower and tagger; not VGGish/PANNs)"
IS_MAX_SPLITS = 10
IS_MIN_PER_SPLIT = 10
LOAD_CHUNK = 16


# ---------------------------------------------------------------------------- features


class _Models:
    """The optional models and the features each clip gets from them."""

    def __init__(
        self,
        mos_model,
        clap,
        captioner,
        batch_size: int,
        embedded: bool,
        frechet_features: str | None,
    ):
        from qamdt.evaluation.embedders import ClapAudioEmbedder, TaggerClassifier

        self.mos = mos_model
        self.clap = clap
        self.batch_size = batch_size
        self.embedder = (
            ClapAudioEmbedder(clap, features=frechet_features, batch_size=batch_size)
            if clap and embedded
            else None
        )
        self.tagger = (
            TaggerClassifier(captioner, batch_size=batch_size) if captioner and embedded else None
        )

    def run(
        self, waves: list[np.ndarray], rates: list[int], texts: list[str | None], clap: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.embedder is not None:
            out["frechet_samples"] = self.embedder.samples(waves, rates)
        if self.tagger is not None:
            out["probs"] = self.tagger.head_probabilities(waves, rates)
        if clap and self.clap is not None:
            out["clap_audio"] = self.clap.embed_audio(waves, rates, self.batch_size)
        if self.mos is not None:
            uses_text = getattr(self.mos.config, "kind", "") == "text-aware"
            scores = self.mos.predict(
                waves, rates, texts=texts if uses_text else None, batch_size=self.batch_size
            )
            out["pmos"] = np.array([s["omq"] for s in scores], dtype=np.float64)
        return out


def _featurize(
    items: Sequence[Any],
    load: Callable[[Any], tuple[np.ndarray, int]],
    text_of: Callable[[Any], str | None],
    models: _Models,
    clap: bool,
    failures: list[dict],
    set_name: str,
    progress: bool,
) -> tuple[list[int], dict[str, Any]]:
    """Loads items in chunks and runs the models; returns kept indices and stacked features."""
    kept: list[int] = []
    parts: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(items),
        desc=f"scoring {set_name}",
        unit="clip",
        disable=not progress,
        file=sys.stderr,
    )
    for start in range(0, len(items), LOAD_CHUNK):
        chunk = list(range(start, min(start + LOAD_CHUNK, len(items))))
        loaded = []
        for index in chunk:
            try:
                loaded.append((index, *load(items[index])))
            except (QamdtError, ValueError, OSError) as error:
                failures.append(
                    {"file": _where(items[index]), "set": set_name, "reason": str(error)}
                )
        try:
            parts.append(_run(models, loaded, items, text_of, clap))
            kept += [i for i, _, _ in loaded]
        except (QamdtError, ValueError):
            # One bad clip should not lose the chunk: score its clips one by one.
            for entry in loaded:
                try:
                    parts.append(_run(models, [entry], items, text_of, clap))
                    kept.append(entry[0])
                except (QamdtError, ValueError) as error:
                    failures.append(
                        {"file": _where(items[entry[0]]), "set": set_name, "reason": str(error)}
                    )
        bar.update(len(chunk))
    bar.close()
    return kept, _stack([p for p in parts if p])


def _run(models: _Models, loaded, items, text_of, clap: bool) -> dict[str, Any]:
    if not loaded:
        return {}
    waves = [w for _, w, _ in loaded]
    rates = [r for _, _, r in loaded]
    return models.run(waves, rates, [text_of(items[i]) for i, _, _ in loaded], clap)


def _stack(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if not parts:
        return {}
    out: dict[str, Any] = {}
    for key in parts[0]:
        if isinstance(parts[0][key], list):  # one array per clip, of any length
            out[key] = [clip for p in parts for clip in p[key]]
        elif key == "probs":
            out[key] = {h: np.concatenate([p[key][h] for p in parts]) for h in parts[0][key]}
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def _where(item: Any) -> str:
    return str(item.path)


# ----------------------------------------------------------------------------- metrics


SHUFFLES = 16  # derangements averaged by the shuffled-prompt CLAP control


def derangement(count: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(count)`` that moves every element (Sattolo).

    Args:
        count: Number of elements, at least 2.
        seed: Seed of ``numpy.random.default_rng``.

    Raises:
        ValueError: If ``count < 2`` (nothing to swap with).
    """
    if count < 2:
        raise ValueError(f"a derangement needs at least 2 elements, got {count}")
    rng = np.random.default_rng(seed)
    order = np.arange(count)
    for i in range(count - 1, 0, -1):
        j = int(rng.integers(0, i))
        order[i], order[j] = order[j], order[i]
    return order


def _is_splits(count: int) -> int:
    return max(1, min(IS_MAX_SPLITS, count // IS_MIN_PER_SPLIT))


def _mean(values: np.ndarray | None) -> float | None:
    return None if values is None or len(values) == 0 else float(np.mean(values))


def _group_metrics(
    rows: list[int],
    clips: list[GeneratedClip],
    gen: dict[str, Any],
    ref: dict[str, Any],
    ref_index: dict[str, int],
    clap_scores: dict[str, np.ndarray],
    class_head: str | None,
    label: str,
    notes: list[str],
) -> dict[str, Any]:
    """Every metric of one set of generated clips (rows index the kept clips)."""
    out: dict[str, Any] = {"count": len(rows)}
    idx = np.asarray(rows, dtype=int)
    pmos = gen.get("pmos")
    out["pmos_mean"] = _mean(pmos[idx]) if pmos is not None else None
    out["pmos_std"] = float(np.std(pmos[idx])) if pmos is not None and len(idx) else None
    out["frechet"] = out["frechet_se"] = None
    if "frechet_samples" in gen and "frechet_samples" in ref:
        samples = [gen["frechet_samples"][i] for i in idx]
        reference = np.concatenate(ref["frechet_samples"])
        if len(idx) >= 3 and len(ref["frechet_samples"]) >= 2:
            out["frechet"], out["frechet_se"] = frechet_jackknife(samples, reference)
        elif len(idx) >= 2 and len(ref["frechet_samples"]) >= 2:
            out["frechet"] = frechet_distance_of(np.concatenate(samples), reference)
        else:
            notes.append(f"{label}: Frechet distance needs at least 2 clips on each side")
    out.update({"kl": None, "kl_sigmoid": None, "kl_pairs": 0, "is": None, "is_std": None})
    if "probs" in gen and class_head is not None and len(idx):
        probs = gen["probs"][class_head][idx]
        splits = _is_splits(len(idx))
        out["is"], out["is_std"] = inception_score(probs, splits=splits)
        out["is_splits"] = splits
        pairs = [(g, ref_index[clips[g].key]) for g in rows if clips[g].key in ref_index]
        out["kl_pairs"] = len(pairs)
        if pairs and "probs" in ref:
            g_pos = np.asarray([g for g, _ in pairs])
            r_rows = np.asarray([r for _, r in pairs])
            out["kl"] = kl_divergence_paired(
                ref["probs"][class_head][r_rows], gen["probs"][class_head][g_pos]
            )
            if "instruments" in gen["probs"]:
                out["kl_sigmoid"] = kl_divergence_paired(
                    ref["probs"]["instruments"][r_rows],
                    gen["probs"]["instruments"][g_pos],
                    kind="sigmoid",
                )
        else:
            notes.append(f"{label}: KL skipped, no generated clip's name pairs with a reference")
    out["clap"] = _mean(clap_scores["matched"][idx]) if "matched" in clap_scores else None
    out["clap_shuffled"] = (
        _mean(clap_scores["shuffled"][idx]) if "shuffled" in clap_scores else None
    )
    return out


def _clap_scores(
    clap, clips: list[GeneratedClip], audio_emb: np.ndarray, seed: int, notes: list[str]
) -> dict[str, np.ndarray]:
    prompts = [c.prompt for c in clips]
    distinct = list(dict.fromkeys(prompts))
    text_emb = clap.embed_text(distinct)
    row = {p: i for i, p in enumerate(distinct)}
    own = np.array([row[p] for p in prompts])
    scores = {"matched": np.sum(audio_emb * text_emb[own], axis=1).astype(np.float64)}
    if len(distinct) >= 2:
        # One derangement of a few prompts is a noisy control: average several.
        similarity = audio_emb @ text_emb.T
        rows = np.arange(len(clips))
        shuffled = [
            similarity[rows, derangement(len(distinct), seed + k)[own]] for k in range(SHUFFLES)
        ]
        scores["shuffled"] = np.mean(shuffled, axis=0).astype(np.float64)
    else:
        notes.append("shuffled CLAP control skipped: every clip has the same prompt")
    return scores


def _level_order(level: int | float | None) -> tuple[int, float]:
    return (1, 0.0) if level is None else (0, float(level))


# ------------------------------------------------------------------------------- entry


def evaluate_generated(
    generated_dir: str | os.PathLike,
    reference: str | os.PathLike,
    mos_model=None,
    clap=None,
    captioner=None,
    out: str | os.PathLike | None = None,
    *,
    split: str = "test",
    reference_filter: str = "all",
    backend: str = "embedded",
    frechet_features: str | None = None,
    audioldm_eval_ckpt: str | os.PathLike | None = None,
    batch_size: int = 8,
    seed: int = 0,
    examples_per_level: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores generated clips against a reference set, overall and per quality level.

    Args:
        generated_dir: Folder of generated ``NAME.wav`` + ``NAME.json`` (module docstring).
        reference: A manifest (rows of ``split`` passing ``reference_filter``) or a folder.
        mos_model: A ``mos_predictor`` ``MosModel`` for p-MOS, or ``None``.
        clap: A ``captioning`` ``ClapScorer`` for the CLAP score and (embedded backend)
            the Frechet-distance features, or ``None``.
        captioner: The embedded captioner for KL and IS (embedded backend), or ``None``.
        out: Folder to write ``report.json`` / ``report.html`` into, or ``None``.
        split: Manifest split of the reference, or ``"all"``.
        reference_filter: ``"all"``, ``"clean"`` or ``"quality>=K"``.
        backend: ``"embedded"`` or ``"audioldm-eval"`` (FAD/KL/IS from audioldm_eval).
        frechet_features: The embedded backend's Frechet features, a kind of
            :class:`~qamdt.evaluation.embedders.ClapAudioEmbedder` (``"frames"``,
            ``"pooled"``, ``"projected"``); ``None`` takes its default.
        audioldm_eval_ckpt: Checkpoint folder of the audioldm-eval backend.
        batch_size: Clips or windows per forward pass.
        seed: Seed of the shuffled-prompt control (its derangements use ``seed`` to
            ``seed + SHUFFLES - 1``).
        examples_per_level: Clips per level listed under ``examples`` for the report.
        progress: Show progress bars on stderr.

    Returns:
        A JSON-ready dict: ``backend``, ``features``, ``generated``, ``reference``,
        ``overall``, ``quality_sweep`` (one entry per level, ``level`` null last),
        ``clap`` (``matched``, ``shuffled``), ``examples``, ``failures``, ``notes``.

    Raises:
        ConfigError: On an unknown backend or filter, a non-embedded captioner, or a
            missing audioldm_eval / its checkpoints.
        QamdtError: If the inputs are missing or no generated clip can be scored.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    aeval = None
    if backend == "audioldm-eval":
        from qamdt.evaluation.audioldm_eval_backend import AudioldmEvalBackend

        aeval = AudioldmEvalBackend(audioldm_eval_ckpt)
    models = _Models(
        mos_model, clap, captioner, batch_size, aeval is None, frechet_features=frechet_features
    )
    clips, failures = read_generated(generated_dir)
    refs, ref_description = read_reference(reference, split, reference_filter)
    notes: list[str] = []

    kept, gen = _featurize(
        clips, load_generated, lambda c: c.prompt, models, True, failures, "generated", progress
    )
    if not kept:
        raise QamdtError(f"{generated_dir}: no generated clip could be scored ({failures[:1]})")
    clips = [clips[i] for i in kept]
    needs_ref = models.embedder is not None or models.tagger is not None or mos_model is not None
    ref_kept: list[int] = []
    ref: dict[str, Any] = {}
    if needs_ref:
        ref_kept, ref = _featurize(
            refs,
            load_reference,
            lambda r: r.text,
            models,
            False,
            failures,
            "reference",
            progress,
        )
        refs = [refs[i] for i in ref_kept]
    ref_index: dict[str, int] = {}
    for row, r in enumerate(refs):
        ref_index.setdefault(r.key, row)

    clap_scores: dict[str, np.ndarray] = {}
    if "clap_audio" in gen:
        clap_scores = _clap_scores(clap, clips, gen["clap_audio"], seed, notes)
    class_head = models.tagger.class_head if models.tagger is not None else None

    groups: dict[Any, list[int]] = {}
    for row, clip in enumerate(clips):
        groups.setdefault(clip.level, []).append(row)
    levels = sorted(groups, key=_level_order)

    def metrics_of(rows: list[int], label: str) -> dict[str, Any]:
        values = _group_metrics(
            rows, clips, gen, ref, ref_index, clap_scores, class_head, label, notes
        )
        if aeval is not None:
            values.update(_backend_metrics(aeval, [clips[i] for i in rows], refs, label, notes))
        return values

    overall = metrics_of(list(range(len(clips))), "overall")
    sweep = [{"level": lv, **metrics_of(groups[lv], f"level {lv}")} for lv in levels]
    if clap is None:
        notes.append("no CLAP model: CLAP score and (embedded backend) Frechet distance skipped")
    if captioner is None and aeval is None:
        notes.append("no captioner: KL and IS skipped")
    if mos_model is None:
        notes.append("no MOS model: p-MOS skipped")

    results: dict[str, Any] = {
        "backend": EMBEDDED_BACKEND if aeval is None else aeval.name,
        "features": {
            "frechet": models.embedder.description if models.embedder else None,
            "tagger": models.tagger.description if models.tagger else None,
            "clap": f"CLAP ({getattr(clap, 'kind', '?')}), cosine with the prompt"
            if clap
            else None,
            "mos": "MOS model overall quality (omq)" if mos_model is not None else None,
        },
        "generated": {"dir": str(generated_dir), "count": len(clips)},
        "reference": {
            **ref_description,
            "count": len(refs),
            "pmos_mean": _mean(ref.get("pmos")),
        },
        "overall": overall,
        "quality_sweep": sweep,
        "clap": {
            "matched": overall["clap"],
            "shuffled": overall["clap_shuffled"],
            "shuffle_seed": seed,
        },
        "examples": _examples(clips, gen, clap_scores, groups, levels, examples_per_level),
        "failures": failures,
        "notes": list(dict.fromkeys(notes)),
    }
    if out is not None:
        from qamdt.evaluation.report import write_report

        write_report(results, out)
    return results


def _backend_metrics(aeval, clips, refs, label: str, notes: list[str]) -> dict[str, Any]:
    try:
        return aeval.score(
            [(c.key, c.path) for c in clips],
            [(r.key, r.path, r.offset, r.duration) for r in refs],
        )
    except QamdtError as error:
        notes.append(f"{label}: audioldm_eval skipped ({error})")
        return {"frechet": None, "kl": None, "kl_sigmoid": None, "is": None, "is_std": None}


def _examples(clips, gen, clap_scores, groups, levels, per_level: int) -> list[dict[str, Any]]:
    out = []
    for level in levels:
        for row in groups[level][: max(0, per_level)]:
            clip = clips[row]
            out.append(
                {
                    "level": level,
                    "name": clip.name,
                    "prompt": clip.prompt,
                    "seed": clip.seed,
                    "audio": str(clip.path),
                    "pmos": float(gen["pmos"][row]) if "pmos" in gen else None,
                    "clap": float(clap_scores["matched"][row]) if clap_scores else None,
                }
            )
    return out
