"""The demo's long-form and editing stage: the generation modes on the trained models.

With the run's quality-aware pipeline, its MOS predictor and CLAP scorer, it makes

* long pieces (three, each six generated clips long: 30 s in the full run) in windows of the
  generated clips' length, and measures the spectral flux at their window seams against
  elsewhere (:mod:`qamdt.evaluation.seams`), beside the same statistic midway between
  the seams, and their p-MOS against fresh clips of the same prompts and level
  (:func:`excerpt_pmos`: both scored in excerpts of the clip length);
* a continuation of a clean held-out clip to twice its length, and an inpainting of the
  middle fifth of it;
* audio-to-audio of degraded held-out clips at levels 1 and 5 (strength 0.5), scored by
  p-MOS and by CLAP against their captions beside a fresh generation from those captions.

Everything is written to ``OUT/editing`` (WAVs with sidecars, ``editing.json``);
``benchmarks/measure_modes.py`` runs the same measures with more pieces and clips.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PIECE_CLIPS = 6
"""The long piece is this many generated clips long."""
EDIT_PIECES = 3
"""Long pieces of the demo's stage: the p-MOS of one piece's six excerpts against six clips
differs by about 0.34 (one standard error) by chance alone, more than the 0.3 target."""
STRENGTH = 0.5
"""Audio-to-audio strength of the enhancement."""
TARGETS = {"seam_flux_ratio": 1.5, "pmos_gap": 0.3}
"""The issue's targets: seam flux within 1.5x of elsewhere, piece p-MOS within 0.3."""


def excerpt_pmos(waves, seconds: float, rate: int, score) -> list[float]:
    """p-MOS of each wave as the mean over its consecutive excerpts of ``seconds``.

    A long piece and a clip must be scored alike to be compared: the MOS predictor
    peak-normalises what it is given and averages its fixed windows, so a 30 s piece
    scored whole is heard at the level of its loudest moment (its windows come out
    quieter than a 5 s clip's, and the predictor rates quieter audio higher). Cut into
    excerpts of the clip length, each excerpt is normalised and windowed exactly as a
    clip is. A wave no longer than ``seconds`` (or a remainder shorter than half of it)
    is not cut further.

    Args:
        waves: Mono sample arrays.
        seconds: Excerpt length (the clips' length).
        rate: Their sample rate.
        score: ``score(list_of_waves) -> list_of_pmos``.
    """
    pieces, owners = [], []
    for i, wave in enumerate(waves):
        cut = excerpts(wave, seconds, rate)
        pieces += cut
        owners += [i] * len(cut)
    values, owners = np.asarray(score(pieces), dtype=float), np.asarray(owners)
    return [float(values[owners == i].mean()) for i in range(len(waves))]


def excerpts(wave, seconds: float, rate: int) -> list[np.ndarray]:
    """Consecutive excerpts of ``seconds``; a remainder under half of that joins the last."""
    wave = np.asarray(wave)
    size = max(1, round(seconds * rate))
    count = max(1, len(wave) // size + (len(wave) % size >= size / 2))
    return [wave[k * size : len(wave) if k == count - 1 else (k + 1) * size] for k in range(count)]


def midpoints(seams):
    """Positions midway between neighbouring seams: controls, as far from any seam as can be."""
    return [(a + b) / 2 for a, b in zip(seams[:-1], seams[1:], strict=False)]


def _excerpt(record, corpus_root: Path, seconds: float, rate: int) -> np.ndarray:
    from qamdt.audio_io import load_audio

    duration = min(seconds, record.duration) if record.duration else seconds
    wave, _ = load_audio(
        record.audio_path(corpus_root), rate, offset=record.offset, duration=duration
    )
    return wave


def _caption(record) -> str:
    return record.meta.get("true_caption") or record.final_caption or record.caption_text()


def _held_out(records, degraded: bool) -> list:
    """Test clips (then valid ones) with or without degradations, in id order."""
    for split in ("test", "valid"):
        chosen = [
            r
            for r in records
            if r.split == split and bool(r.meta.get("degradations")) == degraded and _caption(r)
        ]
        if chosen:
            return sorted(chosen, key=lambda r: r.id)
    return []


def _save(folder: Path, name: str, wave: np.ndarray, rate: int, settings, prompt, facts) -> Path:
    from qamdt.audio_io import save_audio
    from qamdt.generation.sidecar import write_sidecar

    path = folder / f"{name}.wav"
    save_audio(path, np.asarray(wave), rate)
    write_sidecar(path.with_suffix(".json"), settings, prompt, extra=facts)
    return path


def measure_modes(
    pipeline,
    mos_model,
    clap,
    records: Sequence[Any],
    corpus_root: str | Path,
    out: str | Path,
    settings,
    sweep_folder: str | Path | None,
    prompts: Sequence[str],
    pieces: int = 1,
    clips: int = 3,
    negative_levels: dict[int, float | None] | None = None,
    reference_clips: int = PIECE_CLIPS,
    log=print,
) -> dict[str, Any]:
    """Runs the long-form and editing measures and writes their audio.

    Args:
        pipeline: The quality-aware :class:`~qamdt.generation.pipeline.QAMDTPipeline`.
        mos_model: The MOS predictor.
        clap: The CLAP scorer.
        records: The corpus manifest's records.
        corpus_root: Folder their audio paths are relative to.
        out: Output folder.
        settings: The generation settings of the sweep (``audio_length_in_s`` is the
            clip length, which is also the window here); levels are set per use.
        sweep_folder: The sweep's generated clips (their level-5 p-MOS is reported beside
            the pieces' for comparison), or None.
        prompts: Prompts of the long pieces (the first ``pieces`` are used).
        pieces: Long pieces to make.
        clips: Degraded held-out clips to enhance.
        negative_levels: Negative quality level of levels 1 and 5 (the demo mirrors
            them: 5 and 1); None keeps the settings' negative level.
        reference_clips: Fresh clips per piece prompt, the reference of the pieces'
            p-MOS (made with the pieces' settings; 0 skips the comparison).
        log: Progress messages.

    Returns:
        ``targets`` (rows: measure, value, target, met), ``pieces``, ``continuation``,
        ``inpainting``, ``enhancement`` (rows per clip) and ``examples`` for the report.
    """
    from qamdt.evaluation.seams import seam_flux_ratios, window_seams

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus_root = Path(corpus_root)
    rate = pipeline.spec.sample_rate
    clip_seconds = settings.audio_length_in_s or pipeline.spec.clip_seconds
    top = 5
    negative_levels = negative_levels or {}

    def at_level(level: int):
        negative = negative_levels.get(level, settings.negative_quality_level)
        return settings.replace(quality_level=level, negative_quality_level=negative)

    level5 = at_level(top).replace(window_seconds=clip_seconds)

    def score(waves):
        return [float(s["omq"]) for s in mos_model.predict(list(waves), rate)]

    examples: list[dict[str, Any]] = []
    # Long pieces, and fresh clips of the same prompts as their reference.
    length = PIECE_CLIPS * clip_seconds
    piece_settings = level5.replace(audio_length_in_s=length)
    made = pipeline(list(prompts[:pieces]), piece_settings)
    piece_rows = []
    seams = window_seams(made.mode_facts.get("windows", []))
    controls = midpoints(seams)
    for i, (wave, prompt) in enumerate(zip(made.audios, made.prompts, strict=True)):
        path = _save(out, f"piece_{i}", wave, rate, piece_settings, prompt, made.mode_facts)
        flux = seam_flux_ratios(wave, seams, pipeline.spec, controls=controls)
        at_seams, at_controls = flux["ratios"], flux["control_ratios"]
        piece_rows.append(
            {
                "prompt": prompt,
                "file": str(path),
                "seams": len(seams),
                "seam_flux": at_seams,
                "seam_flux_mean": float(np.mean(at_seams)) if at_seams else float("nan"),
                "seam_flux_max": float(np.max(at_seams)) if at_seams else float("nan"),
                "control_flux_mean": float(np.mean(at_controls)) if at_controls else None,
                "control_flux_max": float(np.max(at_controls)) if at_controls else None,
            }
        )
        if i == 0:
            examples.append(
                {
                    "audio": str(path),
                    "name": f"long-form {length:g} s piece",
                    "level": top,
                    "prompt": prompt,
                }
            )
    piece_pmos = excerpt_pmos(made.audios, clip_seconds, rate, score)
    for row, value, whole in zip(piece_rows, piece_pmos, score(made.audios), strict=True):
        row["pmos"] = value
        row["pmos_whole"] = whole
    # As many clips per prompt as a piece has excerpts, made with the pieces' settings.
    clip_pmos = None
    if reference_clips:
        clip_settings = level5.replace(
            audio_length_in_s=clip_seconds, num_waveforms_per_prompt=reference_clips
        )
        reference = pipeline(list(made.prompts), clip_settings)
        clip_pmos = float(np.mean(excerpt_pmos(reference.audios, clip_seconds, rate, score)))
    sweep_pmos = None
    if sweep_folder is not None:
        sweep_pmos = _sweep_pmos(Path(sweep_folder), top, mos_model, made.prompts)
    log(f"demo: long-form: {pieces} piece(s) of {length:g} s, {len(seams)} seams each")

    # Continuation and inpainting of a clean held-out clip.
    clean = _held_out(records, degraded=False)
    editing: dict[str, Any] = {}
    if clean:
        record = clean[0]
        prompt = _caption(record)
        wave = _excerpt(record, corpus_root, clip_seconds, rate)
        source = _save(out, "source", wave, rate, level5, prompt, {"reference_id": record.id})
        examples.append(
            {"audio": str(source), "name": f"held-out clip {record.id}", "prompt": prompt}
        )
        total = 2 * len(wave) / rate
        cont_settings = level5.replace(audio_length_in_s=total)
        cont = pipeline(prompt, cont_settings, continue_audio=str(source))
        path = _save(
            out, "continuation", cont.audios[0], rate, cont_settings, prompt, cont.mode_facts
        )
        examples.append(
            {
                "audio": str(path),
                "name": f"continuation to {total:.1f} s",
                "level": top,
                "prompt": prompt,
            }
        )
        seconds = len(wave) / rate
        hole = (round(0.4 * seconds, 2), round(0.6 * seconds, 2))
        inpaint_settings = level5.replace(audio_length_in_s=None, inpaint_ranges=(hole,))
        inpainted = pipeline(prompt, inpaint_settings, inpaint_audio=str(source))
        path = _save(
            out,
            "inpainted",
            inpainted.audios[0],
            rate,
            inpaint_settings,
            prompt,
            inpainted.mode_facts,
        )
        examples.append(
            {
                "audio": str(path),
                "name": f"inpainted {hole[0]:g}-{hole[1]:g} s",
                "level": top,
                "prompt": prompt,
            }
        )
        cont_pmos, inpaint_pmos, source_pmos = score([cont.audios[0], inpainted.audios[0], wave])
        editing = {
            "continuation": {
                "file": str(out / "continuation.wav"),
                "seconds": total,
                "pmos": cont_pmos,
                "source_pmos": source_pmos,
            },
            "inpainting": {
                "file": str(out / "inpainted.wav"),
                "range": list(hole),
                "pmos": inpaint_pmos,
                "source_pmos": source_pmos,
            },
        }
        log("demo: continuation and inpainting done")

    # Audio-to-audio enhancement of degraded held-out clips.
    degraded = _held_out(records, degraded=True)[:clips]
    rows = _enhance(
        pipeline, clap, degraded, corpus_root, out, at_level, clip_seconds, score, examples
    )
    log(f"demo: audio-to-audio of {len(rows)} degraded clip(s) at levels 1 and 5")

    def mean(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    piece_mean = float(np.mean(piece_pmos))
    gap = None if clip_pmos is None else abs(piece_mean - clip_pmos)
    flux_max = max(
        (r["seam_flux_max"] for r in piece_rows if np.isfinite(r["seam_flux_max"])), default=None
    )
    control_max = max(
        (r["control_flux_max"] for r in piece_rows if r["control_flux_max"] is not None),
        default=None,
    )
    targets = [
        _target(
            "seam spectral flux / median elsewhere (max over seams)",
            flux_max,
            f"<= {TARGETS['seam_flux_ratio']}",
            flux_max is not None and flux_max <= TARGETS["seam_flux_ratio"],
        ),
        _target(
            f"p-MOS {length:g} s pieces vs {clip_seconds:g} s clips, level {top} "
            f"(gap; both in {clip_seconds:g} s excerpts)",
            gap,
            f"<= {TARGETS['pmos_gap']}",
            gap is not None and gap <= TARGETS["pmos_gap"],
        ),
        _target(
            f"a2a p-MOS level 5 - level 1 (strength {STRENGTH})",
            _diff(mean("pmos_a2a_5"), mean("pmos_a2a_1")),
            "> 0",
            _diff(mean("pmos_a2a_5"), mean("pmos_a2a_1"), 0) > 0,
        ),
        _target(
            "a2a CLAP to caption - fresh generation's",
            _diff(mean("clap_a2a_5"), mean("clap_fresh_5")),
            "> 0",
            _diff(mean("clap_a2a_5"), mean("clap_fresh_5"), 0) > 0,
        ),
    ]
    return {
        "targets": targets,
        "piece_seconds": length,
        "window_seconds": clip_seconds,
        "pieces": piece_rows,
        "pmos_pieces": piece_mean,
        "pmos_pieces_whole": float(np.mean([r["pmos_whole"] for r in piece_rows])),
        "pmos_clips_same_level": clip_pmos,
        "reference_clips": reference_clips,
        "pmos_sweep_clips": sweep_pmos,
        "control_flux_max": control_max,
        **editing,
        "enhancement": rows,
        "enhancement_means": {key: mean(key) for key in rows[0] if key.startswith(("pmos", "clap"))}
        if rows
        else {},
        "examples": examples,
    }


def _diff(a, b, missing=None):
    return missing if a is None or b is None else a - b


def _target(measure: str, value, target: str, met: bool) -> dict[str, Any]:
    return {"measure": measure, "value": value, "target": target, "met": bool(met)}


def _sweep_pmos(folder: Path, level: int, mos_model, prompts: Sequence[str]) -> float | None:
    """Mean p-MOS of the sweep's clips of ``level`` made from ``prompts`` (a paired reference)."""
    from qamdt.audio_io import load_audio
    from qamdt.generation.sidecar import read_sidecar

    waves, rate = [], None
    for sidecar in sorted(folder.glob("*.json")):
        found = read_sidecar(sidecar)
        if found.settings.quality_level == level and found.prompt in set(prompts):
            wave, rate = load_audio(sidecar.with_suffix(".wav"), allow_silent=True)
            waves.append(wave)
    if not waves:
        return None
    return float(np.mean([s["omq"] for s in mos_model.predict(waves, rate)]))


def _enhance(pipeline, clap, chosen, corpus_root, out, at_level, seconds, score, examples):
    rate = pipeline.spec.sample_rate
    rows = []
    captions = [_caption(r) for r in chosen]
    fresh = pipeline(captions, at_level(5)).audios if chosen else []
    for i, (record, caption) in enumerate(zip(chosen, captions, strict=True)):
        wave = _excerpt(record, corpus_root, seconds, rate)
        source = _save(
            out, f"degraded_{i}", wave, rate, at_level(5), caption, {"reference_id": record.id}
        )
        if i == 0:
            examples.append(
                {"audio": str(source), "name": f"degraded held-out {record.id}", "prompt": caption}
            )
        made = {}
        for level in (1, 5):
            a2a = at_level(level).replace(strength=STRENGTH, audio_length_in_s=None)
            output = pipeline(caption, a2a, init_audio=str(source))
            made[level] = output.audios[0]
            path = _save(
                out,
                f"degraded_{i}_a2a_level{level}",
                made[level],
                rate,
                a2a,
                caption,
                output.mode_facts,
            )
            if i == 0:
                examples.append(
                    {
                        "audio": str(path),
                        "name": f"a2a level {level} of {record.id}",
                        "level": level,
                        "prompt": caption,
                    }
                )
        waves = [wave, made[1], made[5], fresh[i]]
        pmos = score(waves)
        claps = clap.text_audio_scores(waves, rate, [caption] * len(waves))
        rows.append(
            {
                "id": record.id,
                "degradations": ", ".join(
                    str(d.get("type", d)) if isinstance(d, dict) else str(d)
                    for d in record.meta.get("degradations", [])
                ),
                "pmos_input": pmos[0],
                "pmos_a2a_1": pmos[1],
                "pmos_a2a_5": pmos[2],
                "pmos_fresh_5": pmos[3],
                "clap_input": float(claps[0]),
                "clap_a2a_1": float(claps[1]),
                "clap_a2a_5": float(claps[2]),
                "clap_fresh_5": float(claps[3]),
            }
        )
    return rows


def edit(ctx) -> dict[str, Any]:
    """The demo stage: :func:`measure_modes` on the run's models, three pieces, three clips."""
    import time

    from captioning.base import load_clap
    from mos_predictor.models import load_mos_model
    from qamdt.demo.common import judge_model
    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.manifest import read_manifest

    start = time.perf_counter()
    s = ctx.settings
    models = ctx.out / "models"
    manifest = ctx.out / "corpus" / "manifest.jsonl"
    prompts = [c["prompt"] for c in ctx.results.get("generate", {}).get("prompts", [])]
    result = measure_modes(
        QAMDTPipeline.from_pretrained(models / "pipeline", torch_dtype=s.pipeline_dtypes()),
        load_mos_model(judge_model(ctx.out, s)),
        load_clap(models / "clap"),
        list(read_manifest(manifest)),
        manifest.parent,
        ctx.out / "editing",
        s.generation_settings(),
        ctx.out / "generated" / "qa-mdt",
        prompts or ["a calm piano piece"],
        pieces=EDIT_PIECES,
        negative_levels={level: s.negative_level_for(level) for level in (1, 5)},
        log=ctx.log,
    )
    result["seconds"] = round(time.perf_counter() - start, 2)
    from qamdt.json_files import write_json

    write_json(ctx.out / "editing" / "editing.json", result)
    return result
