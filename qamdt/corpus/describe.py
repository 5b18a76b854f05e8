"""Tables and a picture that show what a built corpus is made of."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qamdt.audio_io import load_audio
from qamdt.corpus.build import INFO_NAME, MANIFEST_NAME, corpus_summary
from qamdt.errors import QamdtError
from qamdt.manifest import ClipRecord, read_manifest


def _table(title: str, counts: dict, total: int, key_name: str) -> list[str]:
    lines = [f"| {key_name} | clips | share |", "|---|---:|---:|"]
    for key, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {key} | {count} | {100.0 * count / max(total, 1):.1f}% |")
    return [f"**{title}**", "", *lines, ""]


def _pick_examples(records: list[ClipRecord]) -> tuple[ClipRecord, ClipRecord]:
    """A clean clip and the most degraded clip of the same piece family, for the figure."""
    clean = [r for r in records if not r.meta["degradations"]]
    degraded = sorted(
        (r for r in records if r.meta["degradations"]),
        key=lambda r: r.meta["reference_quality"],
    )
    if not clean or not degraded:
        raise QamdtError("the corpus needs at least one clean and one degraded clip to draw")
    worst = degraded[0]
    same_source = [r for r in clean if r.meta["source"] == worst.meta["source"]]
    return (same_source or clean)[0], worst


def describe_corpus(corpus_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Writes ``corpus.md`` and ``corpus.png`` describing a built corpus.

    Args:
        corpus_dir: Folder of a finished ``qamdt corpus build``.
        out_dir: Where to write (default: ``corpus_dir``).

    Returns:
        Paths of the markdown file and the picture.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qamdt.audio_spec import get_audio_spec
    from qamdt.mel import MelFrontEnd

    corpus_dir = Path(corpus_dir)
    out_dir = Path(out_dir) if out_dir else corpus_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = corpus_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise QamdtError(f"{manifest}: not found; build the corpus first")
    records = read_manifest(manifest)
    info = json.loads((corpus_dir / INFO_NAME).read_text())
    summary = corpus_summary(records)
    spec = get_audio_spec(info["config"]["preset"])
    total = summary["clips"]

    lines = [
        f"Corpus in `{corpus_dir}`: {total} clips ({summary['hours']} h) of "
        f"{spec.clip_seconds:.2f} s at {spec.sample_rate} Hz, seed {info['config']['seed']}, "
        f"built in {info['build_seconds']} s with {info['workers']} workers.",
        "",
        "| split | clips | pieces |",
        "|---|---:|---:|",
    ]
    for split, pieces in summary["pieces_per_split"].items():
        lines.append(f"| {split} | {summary['clips_per_split'].get(split, 0)} | {pieces} |")
    lines.append("")
    lines += _table("Score sources", summary["sources"], total, "source")
    ensembles: dict[str, int] = {}
    for name, count in summary["ensembles"].items():
        name = "two melody instruments in unison" if name.endswith(" in unison") else name
        ensembles[name] = ensembles.get(name, 0) + count
    lines += _table("Ensembles", ensembles, total, "ensemble")
    lines += _table("Original captions", summary["caption_kinds"], total, "kind")
    degradations = dict(summary["degradations"], clean=summary["clean_clips"])
    lines += _table("Degradations (a clip can have several)", degradations, total, "type")
    quality = summary["reference_quality"]
    lines.append(
        f"Simulated reference quality: mean {quality['mean']}, std {quality['std']} "
        "(1-5, from the degradation recipe, not rated by listeners)."
    )
    markdown = out_dir / "corpus.md"
    markdown.write_text("\n".join(lines) + "\n")

    clean, worst = _pick_examples(records)
    front_end = MelFrontEnd(spec)
    figure, axes = plt.subplots(2, 2, figsize=(12, 7))
    for axis, record, label in ((axes[0, 0], clean, "clean"), (axes[0, 1], worst, "degraded")):
        wave, _ = load_audio(record.audio_path(corpus_dir), sample_rate=spec.sample_rate)
        mel = front_end.mel_numpy(wave)
        axis.imshow(mel, origin="lower", aspect="auto", cmap="magma",
                    extent=(0, wave.size / spec.sample_rate, 0, spec.n_mels))  # fmt: skip
        kinds = ", ".join(d["type"] for d in record.meta["degradations"]) or "none"
        axis.set_title(
            f"{label}: {record.id}\nQ = {record.meta['reference_quality']:.2f}; "
            f"degradations: {kinds}",
            fontsize=9,
        )
        axis.set_xlabel("seconds")
        axis.set_ylabel("mel band")
    qualities = np.array([r.meta["reference_quality"] for r in records])
    axes[1, 0].hist(qualities, bins=np.linspace(1, 5, 17), color="#4477aa", edgecolor="white")
    axes[1, 0].set_title("simulated reference quality (5 = clean)", fontsize=9)
    axes[1, 0].set_xlabel("quality")
    axes[1, 0].set_ylabel("clips")
    names = list(degradations)
    axes[1, 1].barh(names, [degradations[n] for n in names], color="#cc6677")
    axes[1, 1].set_title("clips per degradation type", fontsize=9)
    figure.tight_layout()
    picture = out_dir / "corpus.png"
    figure.savefig(picture, dpi=90)
    plt.close(figure)
    return markdown, picture
