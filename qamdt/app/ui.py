"""The page: four tabs on Gradio, built around models loaded once.

Generation runs one request at a time (a CPU serves one sampling run best); the queue
holds the rest and shows each user their place. Scoring and browsing run beside it. Bad
input is answered with a message in the page (``gr.Error``), never a traceback.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from pathlib import Path

import gradio as gr

from qamdt.app.dataset import ALL, BRANCH_CHOICES, COLUMNS, LEVEL_CHOICES, SPLIT_CHOICES
from qamdt.app.generate import (
    DEFAULT_NEGATIVE_LEVEL,
    MAX_CANDIDATES,
    build_settings,
    check_prompt,
    generate_clips,
    new_result_dir,
    sweep_levels,
)
from qamdt.errors import QamdtError
from qamdt.generation.settings import GUIDANCE_MODES
from qamdt.quality import LEVELS

SETTING_CONTROLS = (
    "quality", "guidance", "negative_level", "negative_prompt", "guidance_scale",
    "guidance_rescale", "use_interval", "interval_low", "interval_high", "sampler", "steps",
    "eta", "length", "random_seed", "seed", "candidates",
)  # fmt: skip
"""The Generate tab's controls after the prompt, by ``build_settings`` keyword, in order."""

SLOTS = max(MAX_CANDIDATES, len(LEVELS))
"""Result places on the Generate tab: every candidate, or one clip per level."""

QUEUE_SIZE = 64
"""Requests the queue holds before it turns new ones away with a message."""

EDIT_NOTICE = """\
### Editing is not available in this version

Audio-to-audio (SDEdit with a strength), inpainting of time ranges and continuation are
not part of the generation pipeline yet. This tab gets their controls when the pipeline
has those modes; until then nothing here edits audio.
"""


def _user_errors(fn):
    """Turns the project's user-facing errors into a message in the page."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QamdtError as error:
            raise gr.Error(str(error), print_exception=False) from None

    return wrapped


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
        with gr.Tab("Generate", id="generate"):
            _generate_tab(models, work / "generate")
        with gr.Tab("Edit", id="edit"):
            gr.Markdown(EDIT_NOTICE)
        with gr.Tab("Score", id="score"):
            _score_tab(models, work / "score")
        with gr.Tab("Dataset", id="dataset"):
            _dataset_tab(models, work / "dataset")
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=2)
    return app


# ------------------------------------------------------------------------------ generate


def _generate_tab(models, out_root: Path) -> None:
    from qamdt.diffusion.schedule import SAMPLERS

    pipe = models.pipeline
    start = pipe.generation_settings()
    clip_s = pipe.spec.clip_frames * pipe.spec.hop_length / pipe.spec.sample_rate
    interval = start.guidance_interval or (0.0, 1000.0)
    ranked = "ranked by CLAP" if models.clap is not None else "no --clap: not ranked"
    candidates_label = f"Candidates ({ranked})"
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
            quality = gr.Slider(
                1.0,
                5.0,
                value=start.quality_level or 5.0,
                step=0.1,
                label="Quality level (1 low - 5 high; between levels interpolates)",
                elem_id="quality",
            )
            with gr.Row():
                guidance = gr.Radio(
                    list(GUIDANCE_MODES), value=start.guidance, label="Guidance mode"
                )
                negative_level = gr.Dropdown(
                    [DEFAULT_NEGATIVE_LEVEL, "1", "2", "3", "4", "5", "0"],
                    value=DEFAULT_NEGATIVE_LEVEL
                    if start.negative_quality_level is None
                    else f"{start.negative_quality_level:g}",
                    allow_custom_value=True,
                    label="Negative level (quality / released; 0 = null level)",
                )
                negative_prompt = gr.Textbox(
                    label="Negative prompt (empty: none; 'low quality' for negative-prompt)"
                )
            with gr.Row():
                scale = gr.Number(value=start.guidance_scale, label="Guidance scale")
                rescale = gr.Slider(
                    0.0, 1.0, value=start.guidance_rescale, step=0.05, label="Guidance rescale"
                )
            with gr.Row():
                use_interval = gr.Checkbox(
                    value=start.guidance_interval is not None, label="Guide only in an interval"
                )
                low = gr.Number(value=interval[0], label="Interval low (timestep)")
                high = gr.Number(value=interval[1], label="Interval high (timestep)")
            with gr.Row():
                sampler = gr.Dropdown(sorted(SAMPLERS), value=start.scheduler, label="Sampler")
                steps = gr.Number(
                    value=start.num_inference_steps, precision=0, label="Steps", elem_id="steps"
                )
                eta = gr.Number(value=start.eta, label="Eta (DDIM)")
                length = gr.Number(
                    value=start.audio_length_in_s or round(clip_s, 2),
                    label="Length (s)",
                    elem_id="length",
                )
            with gr.Row():
                random_seed = gr.Checkbox(value=start.seed is None, label="Random seed")
                seed = gr.Number(value=start.seed or 0, precision=0, label="Seed")
                candidates = gr.Slider(
                    1,
                    MAX_CANDIDATES,
                    value=start.num_waveforms_per_prompt,
                    step=1,
                    label=candidates_label,
                )
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="generate-button")
                sweep = gr.Button("Same settings, levels 1-5", elem_id="sweep-button")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="generate-status")
            settings_json = gr.JSON(label="Settings (the first clip's sidecar)")
            files = gr.File(
                label="Downloads: WAV + JSON sidecar", file_count="multiple", elem_id="downloads"
            )
    slots = []
    with gr.Row():
        for i in range(SLOTS):
            with gr.Column(min_width=200):
                slots.append(
                    (
                        gr.Audio(
                            type="filepath",
                            visible=False,
                            label=f"clip {i + 1}",
                            elem_id=f"clip-{i}",
                            interactive=False,
                        ),
                        gr.Image(type="filepath", visible=False, show_label=False),
                        gr.Markdown(visible=False),
                    )
                )
    controls = [
        prompt,
        quality,
        guidance,
        negative_level,
        negative_prompt,
        scale,
        rescale,
        use_interval,
        low,
        high,
        sampler,
        steps,
        eta,
        length,
        random_seed,
        seed,
        candidates,
    ]
    outputs = [status, settings_json, files] + [c for slot in slots for c in slot]

    def settings_of(text, values):
        text = check_prompt(text)
        named = dict(zip(SETTING_CONTROLS, values, strict=True))
        return text, build_settings(pipe.generation_defaults, **named)

    def present(clips, began):
        updates = [
            f"{len(clips)} clip(s) in {time.perf_counter() - began:.1f} s",
            json.loads(clips[0].sidecar.read_text(encoding="utf-8")),
            [str(p) for c in clips for p in (c.wav, c.sidecar)],
        ]
        for i in range(SLOTS):
            if i < len(clips):
                clip = clips[i]
                updates += [
                    gr.Audio(value=str(clip.wav), visible=True, label=clip.caption()),
                    gr.Image(value=str(clip.spectrogram), visible=True),
                    gr.Markdown(value=clip.caption(), visible=True),
                ]
            else:
                updates += [
                    gr.Audio(value=None, visible=False),
                    gr.Image(visible=False),
                    gr.Markdown(visible=False),
                ]
        return updates

    def respond(text, values, sweep, progress):
        began = time.perf_counter()
        text, settings = settings_of(text, values)
        folder = new_result_dir(out_root)
        if not sweep:
            return present(generate_clips(models, text, settings, folder), began)
        best = []
        for level_settings in progress.tqdm(sweep_levels(settings), desc="levels"):
            level = int(level_settings.quality_level)
            best.append(generate_clips(models, text, level_settings, folder, f"level{level}_")[0])
        return present(best, began)

    # Gradio passes its progress tracker only to a named positional parameter, hence the
    # controls spelled out; the tracker follows the sampler's progress bar (tqdm).
    @_user_errors
    def on_generate(
        text, q, mode, neg_level, neg_prompt, cfg, cfg_rescale, interval_on, lo, hi, sched,
        n_steps, eta_value, seconds, rand, seed_value, n_cand,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):  # fmt: skip
        values = (q, mode, neg_level, neg_prompt, cfg, cfg_rescale, interval_on, lo, hi, sched,
                  n_steps, eta_value, seconds, rand, seed_value, n_cand)  # fmt: skip
        return respond(text, values, False, progress)

    @_user_errors
    def on_sweep(
        text, q, mode, neg_level, neg_prompt, cfg, cfg_rescale, interval_on, lo, hi, sched,
        n_steps, eta_value, seconds, rand, seed_value, n_cand,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):  # fmt: skip
        values = (q, mode, neg_level, neg_prompt, cfg, cfg_rescale, interval_on, lo, hi, sched,
                  n_steps, eta_value, seconds, rand, seed_value, n_cand)  # fmt: skip
        return respond(text, values, True, progress)

    # One sampling run at a time, across both buttons.
    run.click(
        on_generate,
        controls,
        outputs,
        api_name="generate",
        concurrency_limit=1,
        concurrency_id="sampling",
    )
    prompt.submit(
        on_generate,
        controls,
        outputs,
        api_name=False,
        concurrency_limit=1,
        concurrency_id="sampling",
    )
    sweep.click(
        on_sweep,
        controls,
        outputs,
        api_name="sweep",
        concurrency_limit=1,
        concurrency_id="sampling",
    )


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

    @_user_errors
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

    @_user_errors
    def on_filter(level_value, split_value, branch_value):
        rows, matched = view.rows(level_value, split_value, branch_value)
        note = f"{len(rows)} of {matched} rows shown; select a row to play it."
        return note, rows

    @_user_errors
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
