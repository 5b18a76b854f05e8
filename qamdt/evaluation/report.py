"""The evaluation report: ``report.json`` with the numbers, ``report.html`` to look at.

The page works offline: inline CSS, no script, PNG plots and example audio in the same
folder, referenced by relative paths. Every text from the results (prompts included) is
HTML-escaped. Sections are generic, so callers can add their own: besides ``overall``,
``quality_sweep`` and ``clap``, a ``baselines`` mapping (name to metrics such as
``pmos_mean`` and ``frechet``) becomes a table and reference lines in the plots, a
``stage_seconds`` mapping a timing table, and any other mapping or list of mappings a
table of its own.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qamdt.json_files import plain_json, write_json

SWEEP_COLUMNS = (
    "level",
    "count",
    "pmos_mean",
    "pmos_std",
    "frechet",
    "kl",
    "kl_sigmoid",
    "kl_pairs",
    "is",
    "is_std",
    "is_splits",
    "clap",
    "clap_shuffled",
)
# (metric, axis label, error-bar key) of each sweep plot.
SWEEP_PLOTS = (
    ("pmos_mean", "p-MOS", "pmos_std"),
    ("frechet", "Frechet distance", None),
    ("kl", "KL (softmax)", None),
    ("is", "Inception score", "is_std"),
    ("clap", "CLAP score", None),
)
KNOWN_SECTIONS = {
    "backend",
    "features",
    "generated",
    "reference",
    "overall",
    "quality_sweep",
    "clap",
    "baselines",
    "stage_seconds",
    "examples",
    "failures",
    "notes",
}
SPECTROGRAM_SECONDS = 30.0

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
.plots img { max-width: 49%; border: 1px solid #ddd; margin: .2em 0; }
.example { border: 1px solid #ddd; padding: .6em; margin: .6em 0; border-radius: 4px; }
.example img { max-width: 100%; display: block; } .note { color: #666; font-size: .9em; }
.prompt { font-style: italic; }
"""


def write_report(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike,
    examples: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Writes ``report.json``, ``report.html``, the sweep plots and the example files.

    Args:
        results: What :func:`qamdt.evaluation.evaluate.evaluate_generated` returns, with
            any extra sections (``baselines``, ``stage_seconds``, ...).
        out_dir: Folder to write into (created if missing).
        examples: Clips to show with a spectrogram and a player: dicts with ``audio``
            (a path), optional ``name``, ``level``, ``prompt`` and scores; ``None`` takes
            ``results["examples"]``.

    Returns:
        The path of ``report.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = plain_json(results)
    write_json(out / "report.json", clean, indent=2)
    plots = _sweep_plots(clean, out)
    shown = _prepare_examples(examples if examples is not None else clean.get("examples"), out)
    page = _page(clean, plots, shown)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------- values


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return _esc(value)
    if isinstance(value, float):
        return _esc(f"{value:.4g}")
    if isinstance(value, (Mapping, list)):
        return _esc(json.dumps(value))
    return _esc(value)


def _cell(value: Any) -> str:
    kind = "text" if isinstance(value, (str, Mapping, list)) else ""
    return f'<td class="{kind}">{_fmt(value)}</td>'


def _kv_table(values: Mapping[str, Any]) -> str:
    rows = "".join(f'<tr><th class="text">{_esc(k)}</th>{_cell(v)}</tr>' for k, v in values.items())
    return f"<table>{rows}</table>"


def _rows_table(rows: Sequence[Mapping[str, Any]], preferred: Sequence[str] = ()) -> str:
    columns = [c for c in preferred if any(c in r for r in rows)]
    for row in rows:
        columns += [k for k in row if k not in columns]
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# -------------------------------------------------------------------------------- plots


def _sweep_plots(results: Mapping[str, Any], out: Path) -> list[tuple[str, str]]:
    """Draws each sweep metric against the quality level; returns ``(title, file)``."""
    sweep = [r for r in results.get("quality_sweep") or [] if _number(r.get("level")) is not None]
    drawn = []
    baselines = results.get("baselines") if isinstance(results.get("baselines"), Mapping) else {}
    for metric, label, err_key in SWEEP_PLOTS:
        points = [
            (
                float(r["level"]),
                _number(r.get(metric)),
                _number(r.get(err_key)) if err_key else None,
            )
            for r in sweep
            if _number(r.get(metric)) is not None
        ]
        if not points:
            continue
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(5.2, 3.4))
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        errors = [p[2] or 0.0 for p in points]
        axis.errorbar(
            xs,
            ys,
            yerr=errors if any(errors) else None,
            marker="o",
            capsize=3,
            label="own prompt" if metric == "clap" else "generated",
        )
        if metric == "clap":
            shuffled = [(float(r["level"]), _number(r.get("clap_shuffled"))) for r in sweep]
            shuffled = [p for p in shuffled if p[1] is not None]
            if shuffled:
                axis.plot(*zip(*shuffled, strict=True), "s--", color="gray", label="shuffled")
        if metric == "pmos_mean":
            ref = _number((results.get("reference") or {}).get("pmos_mean"))
            if ref is not None:
                axis.axhline(ref, color="gray", linestyle="--", label="reference set")
        for name, values in baselines.items():
            value = _number(values.get(metric)) if isinstance(values, Mapping) else None
            if value is not None:
                axis.axhline(
                    value, linestyle=":", color=f"C{1 + len(axis.lines) % 8}", label=str(name)
                )
        axis.set_xlabel("quality level")
        axis.set_ylabel(label)
        axis.set_xticks(sorted(set(xs)))
        axis.set_title(f"{label} vs quality level")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        name = f"sweep_{metric}.png"
        figure.savefig(out / name, dpi=90)
        plt.close(figure)
        drawn.append((f"{label} vs quality level", name))
    return drawn


# ----------------------------------------------------------------------------- examples


def _prepare_examples(
    examples: Sequence[Mapping[str, Any]] | None, out: Path
) -> list[dict[str, Any]]:
    """Copies each example's audio beside the report and draws its spectrogram."""
    shown = []
    folder = out / "examples"
    for index, example in enumerate(examples or []):
        entry = dict(example)
        source = Path(str(example.get("audio", "")))
        stem = f"{index:03d}_" + "".join(
            c if c.isalnum() or c in "-_" else "_" for c in str(example.get("name", source.stem))
        )
        entry["error"] = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{stem}{source.suffix or '.wav'}"
            shutil.copyfile(source, target)
            entry["audio_src"] = target.relative_to(out).as_posix()
            picture = folder / f"{stem}.png"
            _spectrogram(target, picture, str(example.get("name", source.stem)))
            entry["picture_src"] = picture.relative_to(out).as_posix()
        except Exception as error:  # noqa: BLE001 - one bad example must not stop the report
            entry["error"] = f"{type(error).__name__}: {error}"
        shown.append(entry)
    return shown


def _spectrogram(audio: Path, picture: Path, title: str) -> None:
    import torch

    from qamdt.audio_io import load_audio
    from qamdt.mel import MelFrontEnd
    from qamdt.training.preview import save_mel_picture

    front = MelFrontEnd("embedded")
    wave, _ = load_audio(
        audio, sample_rate=front.spec.sample_rate, duration=SPECTROGRAM_SECONDS, allow_silent=True
    )
    if wave.shape[0] < front.min_samples:
        wave = np.pad(wave, (0, front.min_samples - wave.shape[0]))
    with torch.no_grad():
        mel = front(torch.from_numpy(np.ascontiguousarray(wave)))
    save_mel_picture(mel.T.cpu(), picture, title)


# --------------------------------------------------------------------------------- page


def _page(results: Mapping[str, Any], plots: list[tuple[str, str]], examples: list[dict]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>QA-MDT evaluation report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>QA-MDT evaluation report</h1>",
    ]
    summary = {"backend": results.get("backend")}
    for key in ("generated", "reference"):
        if isinstance(results.get(key), Mapping):
            summary.update({f"{key} {k}": v for k, v in results[key].items()})
    parts += ["<h2>Run</h2>", _kv_table(summary)]
    if isinstance(results.get("features"), Mapping):
        parts += ["<h2>Features</h2>", _kv_table(results["features"])]
    if isinstance(results.get("overall"), Mapping):
        parts += ["<h2>Overall</h2>", _kv_table(results["overall"])]
    sweep = results.get("quality_sweep")
    if isinstance(sweep, list) and sweep:
        parts += ["<h2>Quality sweep</h2>", _rows_table(sweep, SWEEP_COLUMNS)]
    if plots:
        images = "".join(
            f'<img src="{_esc(urllib.parse.quote(name))}" alt="{_esc(title)}">'
            for title, name in plots
        )
        parts.append(f'<div class="plots">{images}</div>')
    if isinstance(results.get("clap"), Mapping):
        parts += [
            "<h2>CLAP score</h2>",
            '<p class="note">Cosine of each clip with its own prompt (no quality prefix), '
            "and with other clips' prompts (the mean over seeded derangements) as a control.</p>",
            _kv_table(results["clap"]),
        ]
    baselines = results.get("baselines")
    if isinstance(baselines, Mapping) and baselines:
        rows = [
            {"name": name, **(values if isinstance(values, Mapping) else {"value": values})}
            for name, values in baselines.items()
        ]
        parts += ["<h2>Baselines</h2>", _rows_table(rows, ("name", "pmos_mean", "frechet"))]
    if isinstance(results.get("stage_seconds"), Mapping):
        parts += ["<h2>Stage seconds</h2>", _kv_table(results["stage_seconds"])]
    for key, value in results.items():
        if key in KNOWN_SECTIONS:
            continue
        title = f"<h2>{_esc(key.replace('_', ' ').capitalize())}</h2>"
        if isinstance(value, Mapping):
            parts += [title, _kv_table(value)]
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            parts += [title, _rows_table(value)]
        else:
            parts += [title, f"<p>{_fmt(value)}</p>"]
    if examples:
        parts += ["<h2>Examples</h2>", _examples_html(examples)]
    failures = results.get("failures") or []
    parts.append(f"<h2>Failures ({len(failures)})</h2>")
    if failures:
        parts.append(_rows_table(failures, ("set", "file", "reason")))
    notes = results.get("notes") or []
    if notes:
        items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
        parts += ["<h2>Notes</h2>", f"<ul>{items}</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _examples_html(examples: list[dict]) -> str:
    blocks = []
    for example in examples:
        head = (
            f"<b>{_esc(example.get('name', ''))}</b> &middot; level "
            f"{_fmt(example.get('level'))} &middot; p-MOS {_fmt(example.get('pmos'))} "
            f"&middot; CLAP {_fmt(example.get('clap'))}"
        )
        body = [f"<div>{head}</div>"]
        if example.get("prompt") is not None:
            body.append(f'<div class="prompt">{_esc(example["prompt"])}</div>')
        if example.get("picture_src"):
            src = _esc(urllib.parse.quote(example["picture_src"]))
            body.append(f'<img src="{src}" alt="spectrogram of {_esc(example.get("name", ""))}">')
        if example.get("audio_src"):
            src = _esc(urllib.parse.quote(example["audio_src"]))
            body.append(f'<audio controls preload="none" src="{src}"></audio>')
        if example.get("error"):
            body.append(f'<div class="note">not shown: {_esc(example["error"])}</div>')
        blocks.append(f'<div class="example">{"".join(body)}</div>')
    return "\n".join(blocks)
