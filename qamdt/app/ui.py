"""The page: four tabs on Gradio, built around models loaded once.

Generation runs one request at a time (a CPU serves one sampling run best); the queue
holds the rest and shows each user their place. Scoring and browsing run beside it. Bad
input is answered with a message in the page (``gr.Error``), never a traceback.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from qamdt.app.dataset import ALL, BRANCH_CHOICES, COLUMNS, LEVEL_CHOICES, SPLIT_CHOICES
from qamdt.app.generate import new_result_dir
from qamdt.app.generate_tab import generate_and_edit_tabs, user_errors

QUEUE_SIZE = 64
"""Requests the queue holds before it turns new ones away with a message."""


def _header(models) -> str:
    loaded = models.describe()
    missing = [
        f"`{flag}` ({what})"
        for flag, what, present in (
            ("--mos", "p-MOS", loaded["mos"]),
            ("--clap", "CLAP scores and re-ranking", loaded["clap"]),
            ("--captioner", "captions of uploaded clips", loaded["captioner"]),
            ("--manifest", "the Dataset tab", loaded["manifest"]),
        )
        if not present
    ]
    lines = [
        "# QA-MDT: quality-aware text-to-music",
        f"Pipeline `{loaded['pipeline']}` ({loaded['sample_rate']} Hz)."
        + (f" Quality statistics: `{loaded['quality_stats']}`." if loaded["quality_stats"] else ""),
    ]
    if missing:
        lines.append("Not loaded: " + ", ".join(missing) + ".")
    return "\n\n".join(lines)


def build_app(models, work_dir: str | Path | None = None):
    """Builds the Gradio page.

    Args:
        models: An :class:`~qamdt.app.models.AppModels`.
        work_dir: Where generated files and pictures go (default: a new temporary folder).

    Returns:
        The ``gr.Blocks``, queued, ready to ``launch``.
    """
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="qamdt-app-"))
    with gr.Blocks(title="QA-MDT", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(_header(models))
        generate_and_edit_tabs(models, work / "generate")
        with gr.Tab("Score", id="score"):
            _score_tab(models, work / "score")
        with gr.Tab("Dataset", id="dataset"):
            _dataset_tab(models, work / "dataset")
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=2)
    return app


# ------------------------------------------------------------------------------ score


def _score_tab(models, out_root: Path) -> None:
    from qamdt.app.score import score_clip

    with gr.Row():
        with gr.Column():
            audio = gr.Audio(
                sources=["upload", "microphone"],
                type="filepath",
                label="Audio",
                elem_id="score-audio",
            )
            text = gr.Textbox(label="Text (optional): CLAP scores the clip against it")
            button = gr.Button("Score", variant="primary", elem_id="score-button")
        with gr.Column():
            scores = gr.JSON(label="Scores")
            picture = gr.Image(type="filepath", label="Spectrogram")

    @user_errors
    def on_score(path, caption):
        result, png = score_clip(models, path, caption, new_result_dir(out_root))
        return result, str(png)

    button.click(on_score, [audio, text], [scores, picture], api_name="score")


# ------------------------------------------------------------------------------ dataset


def _dataset_tab(models, out_root: Path) -> None:
    if models.manifest is None:
        gr.Markdown("Start the app with `--manifest MANIFEST` to browse a dataset here.")
        return
    from qamdt.app.dataset import DatasetView
    from qamdt.app.plots import spectrogram_png
    from qamdt.audio_io import load_audio, resample, save_audio

    view = DatasetView(models.manifest, models.stats, out_root / "plots")
    gr.Markdown(view.summary())
    with gr.Row():
        for plot, label in (
            (view.pmos_plot, "p-MOS distribution"),
            (view.levels_plot, "Level counts"),
            (view.clap_plot, "CLAP scores"),
        ):
            if plot is not None:
                gr.Image(value=str(plot), label=label, interactive=False)
    with gr.Row():
        level = gr.Dropdown(LEVEL_CHOICES, value=ALL, label="Level")
        split = gr.Dropdown(SPLIT_CHOICES, value=ALL, label="Split")
        branch = gr.Dropdown(BRANCH_CHOICES, value=ALL, label="Refinement branch")
    first, total = view.rows()
    count = gr.Markdown(f"{len(first)} of {total} rows shown; select a row to play it.")
    table = gr.Dataframe(
        value=first,
        headers=COLUMNS,
        interactive=False,
        wrap=True,
        max_height=420,
        column_widths=["14%", "5%", "5%", "6%", "7%", "7%", "7%", "22%", "27%"],
        elem_id="dataset-table",
    )
    with gr.Row():
        clip_id = gr.Textbox(label="Clip id (select a row, or type one)", elem_id="clip-id")
        player = gr.Audio(
            type="filepath", label="Clip", interactive=False, elem_id="dataset-player"
        )
        picture = gr.Image(type="filepath", show_label=False)

    @user_errors
    def on_filter(level_value, split_value, branch_value):
        rows, matched = view.rows(level_value, split_value, branch_value)
        note = f"{len(rows)} of {matched} rows shown; select a row to play it."
        return note, rows

    @user_errors
    def on_clip(identifier):
        identifier = (identifier or "").strip()
        if not identifier:
            return None, None
        record = view.record(identifier)
        folder = new_result_dir(out_root / "clips")
        spec = models.pipeline.spec
        wave, rate = load_audio(
            view.audio_path(identifier),
            offset=record.offset,
            duration=record.duration,
            allow_silent=True,
        )
        wav = folder / f"{identifier}.wav"
        save_audio(wav, wave, rate)
        png = spectrogram_png(
            resample(wave, rate, spec.sample_rate), spec, folder / f"{identifier}.png", identifier
        )
        return str(wav), str(png)

    def on_select(evt: gr.SelectData):
        row = evt.row_value or []
        return row[0] if row else ""

    for dropdown, name in ((level, "dataset_rows"), (split, False), (branch, False)):
        dropdown.change(on_filter, [level, split, branch], [count, table], api_name=name)
    table.select(on_select, None, clip_id, api_name=False)
    clip_id.change(on_clip, clip_id, [player, picture], api_name="dataset_clip")
