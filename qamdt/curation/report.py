"""``OUT/report.html`` of a curation job: one self-contained page.

It shows the p-MOS distribution with the level edges, the CLAP score distributions with
the refinement thresholds (PNG pictures embedded in the page), quality level counts per
source folder, how many rows refinement filtered, dropped and fused, the rows each stage
could not process, and for each level players for its lowest- and highest-rated clips
(the clips' excerpts are written to ``OUT/report_clips/``, beside the page).

The rows are streamed once; the page keeps the scores (one number per row and score) for
the pictures, counts per folder, and a few clips per level.
"""

from __future__ import annotations

import base64
import collections
import heapq
import html
import io
import posixpath
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from qamdt.curation.settings import CurationSettings
from qamdt.json_files import write_text_atomic
from qamdt.manifest import ClipRecord, iter_manifest
from qamdt.manifest.stages import load_clip_audio

REPORT_NAME = "report.html"
CLIPS_FOLDER = "report_clips"
PLAYER_SECONDS = 10.0
MAX_FOLDERS = 50
CLAP_KEYS = ("generated_audio", "original_audio", "original_generated")


def source_folder(record: ClipRecord) -> str:
    """The folder a row's audio came from (``meta.source``'s folder, else the audio's)."""
    source = record.meta.get("source") if isinstance(record.meta, dict) else None
    path = source if isinstance(source, str) and source else record.audio
    return posixpath.dirname(path.replace("\\", "/")) or "."


class ReportData:
    """What the page shows, gathered row by row.

    Args:
        clips_per_end: Lowest and highest clips kept per level.
    """

    def __init__(self, clips_per_end: int):
        self.clips_per_end = clips_per_end
        self.rows = 0
        self.pmos: list[float] = []
        self.clap: dict[str, list[float]] = {key: [] for key in CLAP_KEYS}
        self.folders: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.errors: collections.Counter = collections.Counter()
        self.error_examples: dict[str, list[str]] = collections.defaultdict(list)
        self.lowest: dict[int, list] = collections.defaultdict(list)
        self.highest: dict[int, list] = collections.defaultdict(list)

    def add(self, record: ClipRecord) -> None:
        """Counts one row."""
        self.rows += 1
        if record.pmos is not None:
            self.pmos.append(record.pmos)
        for key in CLAP_KEYS:
            if key in record.clap:
                self.clap[key].append(record.clap[key])
        self.folders[source_folder(record)][record.quality_level or 0] += 1
        for stage, reason in record.errors.items():
            self.errors[stage] += 1
            if len(self.error_examples[stage]) < 5:
                self.error_examples[stage].append(f"{record.id}: {reason}")
        if record.quality_level and record.pmos is not None and self.clips_per_end:
            level, size = record.quality_level, self.clips_per_end
            # Heaps of (score, id): the id breaks ties, so the page is the same every run.
            _keep(self.highest[level], (record.pmos, record.id, record), size)
            _keep(self.lowest[level], (-record.pmos, _reverse(record.id), record), size)


def _reverse(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text)


def _keep(heap: list, entry: tuple, size: int) -> None:
    if len(heap) < size:
        heapq.heappush(heap, entry)
    elif entry[:2] > heap[0][:2]:
        heapq.heapreplace(heap, entry)


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _histograms(data: ReportData, summary: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs: ``pmos`` and ``clap`` (when there are scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = {}
    if data.pmos:
        figure, axes = plt.subplots(figsize=(7, 3))
        axes.hist(np.asarray(data.pmos), bins=40, color="#4878a8")
        for edge in summary.get("quality", {}).get("level_edges", []):
            axes.axvline(edge, color="#c04040", linestyle="--", linewidth=1)
        axes.set_xlabel("p-MOS (dashed: level edges)")
        axes.set_ylabel("clips")
        pictures["pmos"] = _png(figure)
        plt.close(figure)
    keys = [key for key in CLAP_KEYS if data.clap[key]]
    if keys:
        thresholds = summary.get("refine", {}).get("thresholds", {})
        lines = {"generated_audio": "rho1", "original_audio": "rho2", "original_generated": "rho3"}
        figure, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            ax.hist(np.asarray(data.clap[key]), bins=40, color="#58a868")
            if lines[key] in thresholds:
                ax.axvline(thresholds[lines[key]], color="#c04040", linestyle="--", linewidth=1)
            ax.set_xlabel(f"CLAP {key.replace('_', '-')} (dashed: {lines[key]})")
        axes[0][0].set_ylabel("clips")
        pictures["clap"] = _png(figure)
        plt.close(figure)
    return pictures


def _write_clip(record: ClipRecord, manifest_dir: Path, folder: Path, name: str) -> str | None:
    """Writes a clip's excerpt (at most :data:`PLAYER_SECONDS`) as a WAV; its relative path."""
    import soundfile as sf

    clipped = record.replace(duration=min(record.duration or PLAYER_SECONDS, PLAYER_SECONDS))
    try:
        wave, rate = load_clip_audio(clipped, manifest_dir)
    except Exception:  # noqa: BLE001 - a clip unreadable now gets no player, not a failed page
        return None
    sf.write(folder / name, np.asarray(wave, dtype=np.float32), rate, subtype="PCM_16")
    return f"{CLIPS_FOLDER}/{name}"


def _players(data: ReportData, manifest_dir: Path, out: Path) -> str:
    folder = out / CLIPS_FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    blocks = []
    for level in sorted(set(data.lowest) | set(data.highest)):
        low = [e[2] for e in sorted(data.lowest[level], key=lambda e: (e[2].pmos, e[2].id))]
        shown = {record.id for record in low}
        high = [
            e[2]
            for e in sorted(data.highest[level], key=lambda e: (-e[2].pmos, e[2].id))
            if e[2].id not in shown
        ]
        rows = []
        for end, records in (("lowest", low), ("highest", high)):
            for n, record in enumerate(records):
                src = _write_clip(record, manifest_dir, folder, f"level{level}-{end}{n}.wav")
                player = (
                    f'<audio controls preload="none" src="{html.escape(src)}"></audio>'
                    if src
                    else "(unreadable now)"
                )
                caption = record.final_caption or record.original_caption or ""
                rows.append(
                    f"<tr><td>{end}</td><td>{html.escape(record.id)}</td>"
                    f"<td>{record.pmos:.3f}</td><td>{html.escape(caption)}</td><td>{player}</td></tr>"
                )
        blocks.append(
            f"<h3>Level {level}</h3><table><tr><th></th><th>id</th><th>p-MOS</th>"
            f"<th>caption</th><th>clip</th></tr>{''.join(rows)}</table>"
        )
    return "".join(blocks) or "<p>No clip has a quality level.</p>"


def _folder_table(data: ReportData) -> str:
    totals = sorted(data.folders.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    shown, rest = totals[:MAX_FOLDERS], totals[MAX_FOLDERS:]
    if rest:
        other: collections.Counter = collections.Counter()
        for _, counts in rest:
            other.update(counts)
        shown.append((f"({len(rest)} other folders)", other))
    head = "".join(f"<th>level {n}</th>" for n in range(1, 6))
    lines = [f"<tr><th>folder</th>{head}<th>no level</th><th>rows</th></tr>"]
    for folder, counts in shown:
        cells = "".join(f"<td>{counts.get(n, 0)}</td>" for n in (1, 2, 3, 4, 5, 0))
        lines.append(
            f"<tr><td>{html.escape(folder)}</td>{cells}<td>{sum(counts.values())}</td></tr>"
        )
    return f"<table>{''.join(lines)}</table>"


def _refine_section(summary: dict[str, Any]) -> str:
    refine = summary.get("refine")
    if not refine:
        return "<p>Captions were not refined (no --clap).</p>"
    branches = refine["branches"]
    items = [
        ("rows refined", refine["refined"]),
        ("generated captions filtered (eq. 8: S(Tg, M) <= rho1)",
         f"{refine['generated_filtered_share']:.1%}"),
        ("original captions dropped (eq. 9: S(To, M) <= rho2)",
         f"{refine['original_dropped_share']:.1%}"),
        ("fused: original merged into generated (eq. 10)",
         f"{branches['merged']} ({refine['merged_share']:.1%})"),
        ("kept the generated caption", branches["generated"]),
        ("kept the original caption", branches["original"]),
        ("left without a caption", branches["none"]),
        ("thresholds", ", ".join(f"{k} = {v:g}" for k, v in refine["thresholds"].items())),
    ]  # fmt: skip
    rows = "".join(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return f"<table>{rows}</table>"


def _errors_section(data: ReportData) -> str:
    if not data.errors:
        return "<p>Every row was processed.</p>"
    parts = []
    for stage, count in sorted(data.errors.items()):
        examples = "".join(f"<li>{html.escape(e)}</li>" for e in data.error_examples[stage])
        parts.append(f"<p>{html.escape(stage)}: {count} row(s), e.g.</p><ul>{examples}</ul>")
    return "".join(parts)


def write_report(
    manifest: Path, out: Path, settings: CurationSettings, summary: dict[str, Any]
) -> Path:
    """Writes ``OUT/report.html`` (and the players' clips) for a curated manifest.

    Args:
        manifest: The curated manifest.
        out: The job's folder.
        settings: The job's settings (shown on the page).
        summary: The job's step summaries (level edges, thresholds, selection).

    Returns:
        The page's path.
    """
    data = ReportData(settings.report_clips)
    for record in iter_manifest(manifest, validate=False):
        data.add(record)
    pictures = _histograms(data, summary)
    image = '<img alt="{0}" src="data:image/png;base64,{1}">'
    pmos = image.format("p-MOS histogram", pictures["pmos"]) if "pmos" in pictures else ""
    clap = image.format("CLAP histograms", pictures["clap"]) if "clap" in pictures else ""
    quality = summary.get("quality", {})
    selected = summary.get("selected")
    chosen = (
        f"<p>{selected['selected']} of {selected['rows']} rows selected by "
        f"{html.escape(' and '.join(selected['select']))} (selected.jsonl).</p>"
        if selected
        else "<p>No --select given.</p>"
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Curation report</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:1em auto}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.2em .5em}}
th{{background:#f0f0f0}}</style></head><body>
<h1>Curation report</h1>
<p>{data.rows} rows in {html.escape(str(manifest))}; {len(data.pmos)} with a p-MOS.
MOS model: {html.escape(settings.mos)}. CLAP: {html.escape(str(settings.clap))}.
Captioner: {html.escape(str(settings.captioner))}. Merger: {html.escape(settings.merger)}.</p>
<h2>p-MOS</h2>
<p>mu = {quality.get("mu", float("nan")):.4f}, sigma = {quality.get("sigma", float("nan")):.4f}
({"fitted here" if quality.get("fitted") else "from " + html.escape(str(settings.stats))};
rule {html.escape(str(quality.get("level_rule")))}).</p>
{pmos}
<h2>Quality levels per source folder</h2>
{_folder_table(data)}
<h2>Caption refinement</h2>
{clap}
{_refine_section(summary)}
<h2>Selection</h2>
{chosen}
<h2>Rows not processed</h2>
{_errors_section(data)}
<h2>Lowest- and highest-rated clips per level</h2>
{_players(data, manifest.parent, out)}
</body></html>
"""
    path = out / REPORT_NAME
    write_text_atomic(path, page)
    return path
