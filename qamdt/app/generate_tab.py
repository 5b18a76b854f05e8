"""The Generate and Edit tabs: every generation setting as a control, results as players.

Both tabs build one :class:`~qamdt.generation.settings.GenerationSettings` from the
Generate tab's controls (the Edit tab adds its mode's settings and the input audio), as
``qamdt generate`` builds it from its flags. Sampling runs one request at a time across
every button that samples.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import gradio as gr

from qamdt.app.generate import (
    DEFAULT_NEGATIVE_LEVEL,
    EDIT_MODES,
    MAX_CANDIDATES,
    InputError,
    build_settings,
    check_prompt,
    edit_settings,
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


def user_errors(fn):
    """Turns the project's user-facing errors into a message in the page."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QamdtError as error:
            raise gr.Error(str(error), print_exception=False) from None

    return wrapped


def _settings_of(pipe, text, values):
    text = check_prompt(text)
    named = dict(zip(SETTING_CONTROLS, values, strict=True))
    return text, build_settings(pipe.generation_defaults, **named)


def _result_panel(prefix: str) -> list:
    """Status, the settings JSON and the downloads."""
    return [
        gr.Markdown(elem_id=f"{prefix}generate-status"),
        gr.JSON(label="Settings (the first clip's sidecar)"),
        gr.File(
            label="Downloads: WAV + JSON sidecar",
            file_count="multiple",
            elem_id=f"{prefix}downloads",
        ),
    ]


def _result_slots(prefix: str) -> list:
    """The result places side by side: player, spectrogram and caption each."""
    slots = []
    with gr.Row():
        for i in range(SLOTS):
            with gr.Column(min_width=200):
                slots += [
                    gr.Audio(
                        type="filepath",
                        visible=False,
                        label=f"clip {i + 1}",
                        elem_id=f"{prefix}clip-{i}",
                        interactive=False,
                    ),
                    gr.Image(type="filepath", visible=False, show_label=False),
                    gr.Markdown(visible=False),
                ]
    return slots


def _present(clips, began) -> list:
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


def generate_and_edit_tabs(models, out_root: Path) -> None:
    """Adds the Generate and Edit tabs to the page being built."""
    with gr.Tab("Generate", id="generate"):
        controls = _generate_tab(models, out_root)
    with gr.Tab("Edit", id="edit"):
        _edit_tab(models, out_root, controls)


def _generate_tab(models, out_root: Path) -> list:
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
            panel = _result_panel("")
    result = panel + _result_slots("")
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
    outputs = result

    def respond(text, values, sweep, progress):
        began = time.perf_counter()
        text, settings = _settings_of(pipe, text, values)
        folder = new_result_dir(out_root)
        if not sweep:
            return _present(generate_clips(models, text, settings, folder), began)
        best = []
        for level_settings in progress.tqdm(sweep_levels(settings), desc="levels"):
            level = int(level_settings.quality_level)
            best.append(generate_clips(models, text, level_settings, folder, f"level{level}_")[0])
        return _present(best, began)

    # Gradio passes its progress tracker only to a named positional parameter, hence the
    # controls spelled out; the tracker follows the sampler's progress bar (tqdm).
    def handler(sweep_levels_too: bool):
        @user_errors
        def on_click(
            text, q, mode, neg_level, neg_prompt, cfg, cfg_rescale, interval_on, lo, hi, sched,
            n_steps, eta_value, seconds, rand, seed_value, n_cand,
            progress=gr.Progress(track_tqdm=True),  # noqa: B008
        ):  # fmt: skip
            values = (q, mode, neg_level, neg_prompt, cfg, cfg_rescale, interval_on, lo, hi,
                      sched, n_steps, eta_value, seconds, rand, seed_value, n_cand)  # fmt: skip
            return respond(text, values, sweep_levels_too, progress)

        return on_click

    on_generate, on_sweep = handler(False), handler(True)

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
    return controls


def _edit_tab(models, out_root: Path, controls: list) -> None:
    pipe = models.pipeline
    clip_s = pipe.spec.clip_frames * pipe.spec.hop_length / pipe.spec.sample_rate
    gr.Markdown(
        "Audio-to-audio, inpainting and continuation of an uploaded or recorded clip. "
        "The prompt, quality level, guidance, sampler, seed and candidates are the "
        "**Generate tab's**; the result keeps the input's length (continuation: the total "
        "length below)."
    )
    with gr.Row():
        with gr.Column(scale=3):
            audio = gr.Audio(
                sources=["upload", "microphone"], type="filepath", label="Input audio",
                elem_id="edit-audio",
            )  # fmt: skip
            mode = gr.Radio(list(EDIT_MODES), value="audio-to-audio", label="Mode")
            with gr.Row():
                strength = gr.Slider(
                    0.0, 1.0, value=pipe.generation_settings().strength, step=0.05,
                    label="Strength (audio-to-audio: 0 keeps the input, 1 ignores it)",
                )  # fmt: skip
                ranges = gr.Textbox(
                    label="Ranges to regenerate (inpainting), seconds: e.g. 2-4, 6.5-8",
                    elem_id="edit-ranges",
                )
            with gr.Row():
                resamples = gr.Number(value=1, precision=0, label="RePaint resamples")
                jump = gr.Number(value=10, precision=0, label="RePaint jump")
                total = gr.Number(
                    value=round(2 * clip_s, 1), label="Total length (continuation), s"
                )
            button = gr.Button("Edit", variant="primary", elem_id="edit-button")
        with gr.Column(scale=2):
            panel = _result_panel("edit-")
    result = panel + _result_slots("edit-")

    @user_errors
    def on_edit(
        text, q, guidance_mode, neg_level, neg_prompt, cfg, cfg_rescale, interval_on, lo, hi,
        sched, n_steps, eta_value, seconds, rand, seed_value, n_cand,
        path, mode_value, strength_value, ranges_text, resamples_value, jump_value,
        total_value, progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):  # fmt: skip
        began = time.perf_counter()
        if not path:
            raise InputError("Input audio: upload or record a clip first")
        values = (q, guidance_mode, neg_level, neg_prompt, cfg, cfg_rescale, interval_on, lo,
                  hi, sched, n_steps, eta_value, seconds, rand, seed_value, n_cand)  # fmt: skip
        text, base = _settings_of(pipe, text, values)
        settings, argument = edit_settings(
            base, mode_value, strength=strength_value, ranges=ranges_text,
            resamples=resamples_value, jump=jump_value, total_length=total_value,
        )  # fmt: skip
        folder = new_result_dir(out_root)
        clips = generate_clips(
            models, text, settings, folder, "edit_", audio_inputs={argument: path}
        )
        return _present(clips, began)

    inputs = [*controls, audio, mode, strength, ranges, resamples, jump, total]
    button.click(on_edit, inputs, result, api_name="edit",
                 concurrency_limit=1, concurrency_id="sampling")  # fmt: skip
