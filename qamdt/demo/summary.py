"""The demo report's contents: the sweep, the baselines, stage times and pass/fail checks.

The checks are the measures of the quality-aware generation claim (paper, Fig. 3 and
Table A.3): p-MOS rises with the requested level (level 5 at least ``min_pmos_gain``
above level 1), the Frechet distance to clean held-out clips falls from level 1 to 5,
audio matches its own prompt better than a shuffled one, the quality-aware model at level
5 beats the plain MDT and the MDT with a "low quality" negative prompt on p-MOS and is as
close to clean audio as they are on the Frechet distance (no further than
``frechet_tolerance_se`` jackknife standard errors of the difference: with 20 prompts a
side the difference between the two is within the noise of the prompt draw, docs/demo.md),
and level-5 audio is more periodic than noise with its spectrum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from qamdt.demo.settings import DemoSettings


def _dig(values: Any, *keys: str) -> Any:
    """``values[k1][k2]...``, or None where a level is missing."""
    for key in keys:
        if not isinstance(values, Mapping):
            return None
        values = values.get(key)
    return values


def _level_row(sweep: Sequence[Mapping[str, Any]], pick) -> Mapping[str, Any]:
    rows = [r for r in sweep if isinstance(r.get("level"), (int, float))]
    return pick(rows, key=lambda r: r["level"]) if rows else {}


def _known(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) for v in values)


def _check(name: str, rule: str, left: Any, right: Any, passed, detail: str = "") -> dict[str, Any]:
    """One row of the checks table; a missing figure fails it."""
    known = _known(left, right)
    return {
        "check": name,
        "rule": rule,
        "values": f"{left:.4g} vs {right:.4g}{detail}" if known else "missing",
        "passed": bool(known and passed(left, right)),
    }


def _frechet_allowance(high: Mapping[str, Any], other: Mapping[str, Any], k: float):
    """``k`` standard errors of the difference of two sets' Frechet distances, or None."""
    se_high, se_other = high.get("frechet_se"), other.get("frechet_se")
    return k * math.hypot(se_high, se_other) if _known(se_high, se_other) else None


def compute_checks(
    low: Mapping[str, Any],
    high: Mapping[str, Any],
    clap: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    pitch: Mapping[str, Any],
    min_pmos_gain: float,
    frechet_tolerance_se: float,
) -> list[dict[str, Any]]:
    """The pass/fail criteria.

    Args:
        low: Sweep row of the lowest level (``pmos_mean``, ``frechet``).
        high: Sweep row of the highest level (also ``frechet_se``).
        clap: ``{"matched", "shuffled"}`` CLAP scores of the sweep.
        baselines: Baseline name -> ``{"pmos_mean", "frechet", "frechet_se"}`` (without
            the quality-aware model itself).
        pitch: ``{"level5", "shaped_noise"}`` pitch confidences.
        min_pmos_gain: Least p-MOS gain from the lowest to the highest level.
        frechet_tolerance_se: How many standard errors of the difference level 5's
            Frechet distance may exceed a baseline's.

    Returns:
        Rows ``{"check", "rule", "values", "passed"}``.
    """
    checks = [
        _check(
            "quality control (p-MOS)",
            f"p-MOS(level {high.get('level')}) - p-MOS(level {low.get('level')}) "
            f">= {min_pmos_gain}",
            high.get("pmos_mean"),
            low.get("pmos_mean"),
            lambda a, b: a - b >= min_pmos_gain,
        ),
        _check(
            "quality control (Frechet)",
            f"Frechet(level {high.get('level')}) < Frechet(level {low.get('level')})",
            high.get("frechet"),
            low.get("frechet"),
            lambda a, b: a < b,
        ),
        _check(
            "text control (CLAP)",
            "CLAP(own prompt) > CLAP(shuffled prompt)",
            clap.get("matched"),
            clap.get("shuffled"),
            lambda a, b: a > b,
        ),
    ]
    top = high.get("level")
    for name, values in baselines.items():
        allowance = _frechet_allowance(high, values, frechet_tolerance_se)
        checks.append(
            _check(
                f"beats {name} (p-MOS)",
                f"p-MOS(level {high.get('level')}) > p-MOS({name})",
                high.get("pmos_mean"),
                values.get("pmos_mean"),
                lambda a, b: a > b,
            )
        )
        checks.append(
            _check(
                f"as close to clean audio as {name} (Frechet)",
                f"Frechet(level {top}) - Frechet({name}) < {frechet_tolerance_se:g} x "
                "standard error of the difference",
                high.get("frechet"),
                values.get("frechet") if allowance is not None else None,
                lambda a, b, allowance=allowance: a - b < allowance,
                f" (allowance {allowance:.3g})" if allowance is not None else "",
            )
        )
    checks.append(
        _check(
            "music, not noise (pitch confidence)",
            "periodicity(level 5) > periodicity(noise with its spectrum envelope)",
            pitch.get("level5"),
            pitch.get("shaped_noise"),
            lambda a, b: a > b,
        )
    )
    return checks


def _training(stage_results: Mapping[str, Any]) -> dict[str, Any]:
    """Headline figures of the training stages."""
    r = stage_results
    return {
        "MOS predictor: best valid SRCC": _dig(r, "mos", "best_valid_srcc"),
        "MOS predictor: validated on": _dig(r, "mos", "valid_split"),
        "p-MOS judge: best valid SRCC": _dig(r, "judge", "best_valid_srcc"),
        "p-MOS: mu": _dig(r, "pmos", "stats", "mu"),
        "p-MOS: sigma": _dig(r, "pmos", "stats", "sigma"),
        "p-MOS: level edges": _dig(r, "pmos", "stats", "level_edges"),
        "p-MOS: prefix counts": _dig(r, "pmos", "stats", "prefix_counts"),
        "captioner: valid tag F1": _dig(r, "captioner", "valid", "overall", "f1"),
        "CLAP: valid text-to-audio R@1": _dig(r, "clap", "valid", "t2a_r1"),
        "refine: merged share": _dig(r, "refine", "merged_share"),
        "refine: generated captions filtered": _dig(r, "refine", "generated_filtered_share"),
        "VAE: valid log-mel L1": _dig(r, "vae", "recon_l1_valid"),
        "latent cache: seconds (QA-MDT, baseline)": [
            _dig(r, "cache", "mdt", "seconds"),
            _dig(r, "cache", "mdt-baseline", "seconds"),
        ],
        "QA-MDT: steps": _dig(r, "mdt", "train", "steps"),
        "MDT baseline: steps": _dig(r, "mdt-baseline", "train", "steps"),
    }


def demo_results(
    evaluations: Mapping[str, Mapping[str, Any]],
    pitch: Mapping[str, Any],
    seconds: Mapping[str, float],
    wall_seconds: float,
    stage_results: Mapping[str, Any],
    settings: DemoSettings,
    names: tuple[str, str, str],
    decoder_reference: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Everything ``report.json`` holds.

    Args:
        evaluations: ``evaluate_generated`` results of the sweep and the two baselines.
        pitch: The music-vs-noise figures (``music``, ``shaped_noise``, ``level``).
        seconds: Seconds per stage so far, in pipeline order.
        wall_seconds: Wall-clock seconds of the run so far (stages side by side overlap).
        stage_results: Results recorded per stage.
        settings: The run's settings.
        names: Folder names of the sweep, the plain MDT and the negative-prompt MDT.
        decoder_reference: p-MOS of held-out clips per level, as recorded and resynthesised
            through the pipeline's decoder (``decoder_reference`` rows).

    Returns:
        The sweep's evaluation plus ``stage_seconds``, ``baselines``, ``pitch``,
        ``decoder_reference``, ``checks``, ``training`` and ``settings``; with the
        ``edit`` stage's result also ``long_form_and_editing`` (its measures against
        their targets), ``audio_to_audio_enhancement`` (per clip) and its examples.
    """
    sweep_name, plain_name, negative_name = names
    sweep = evaluations[sweep_name]
    rows = sweep.get("quality_sweep") or []
    low, high = _level_row(rows, min), _level_row(rows, max)
    labels = {
        plain_name: "mdt",
        negative_name: f"mdt + negative prompt '{settings.negative_prompt}'",
    }
    baselines = {
        labels[name]: {
            "pmos_mean": _dig(evaluations[name], "overall", "pmos_mean"),
            "frechet": _dig(evaluations[name], "overall", "frechet"),
            "frechet_se": _dig(evaluations[name], "overall", "frechet_se"),
            "clap": _dig(evaluations[name], "overall", "clap"),
            "count": _dig(evaluations[name], "overall", "count"),
        }
        for name in (plain_name, negative_name)
    }
    top = {k: high.get(k) for k in ("pmos_mean", "frechet", "frechet_se", "clap", "count")}
    pitch_figures = {
        "level5": pitch.get("music"),
        "shaped_noise": pitch.get("shaped_noise"),
        "clips": pitch.get("clips"),
        "measure": "mean normalised-autocorrelation periodicity over pitches "
        f"{settings.pitch_fmin:g}-{settings.pitch_fmax:g} Hz",
    }
    checks = compute_checks(
        low,
        high,
        sweep.get("clap") or {},
        baselines,
        pitch_figures,
        settings.min_pmos_gain,
        settings.frechet_tolerance_se,
    )
    examples = list(sweep.get("examples") or [])
    failures = list(sweep.get("failures") or [])
    notes = list(sweep.get("notes") or [])
    for name in (plain_name, negative_name):
        for example in (evaluations[name].get("examples") or [])[:1]:
            examples.append({**example, "name": f"{labels[name]}: {example.get('name')}"})
        failures += evaluations[name].get("failures") or []
        notes += [f"{labels[name]}: {n}" for n in evaluations[name].get("notes") or []]
    stage_seconds = dict(seconds)
    stage_seconds["sum of stages"] = round(sum(stage_seconds.values()), 2)
    stage_seconds["wall clock"] = round(wall_seconds, 2)
    editing = _editing(stage_results.get("edit"))
    examples += editing.pop("examples", [])
    return {
        **sweep,
        "examples": examples,
        "failures": failures,
        "notes": list(dict.fromkeys(notes)),
        "stage_seconds": stage_seconds,
        "baselines": {f"qa-mdt (level {high.get('level')})": top, **baselines},
        "pitch": pitch_figures,
        "decoder_reference": [dict(row) for row in decoder_reference],
        "checks": checks,
        "training": _training(stage_results),
        **editing,
        "settings": settings.to_dict(),
    }


def _editing(result: Any) -> dict[str, Any]:
    """The report sections of the long-form and editing stage (none without it)."""
    if not isinstance(result, Mapping):
        return {}
    return {
        "long_form_and_editing": list(result.get("targets") or []),
        "audio_to_audio_enhancement": list(result.get("enhancement") or []),
        "examples": list(result.get("examples") or []),
    }
