"""``qamdt generate``: music from text at a chosen quality level."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qamdt.cli.arguments import add_torch_dtype_argument, device_name, positive_int
from qamdt.generation.settings import GUIDANCE_MODES

# Command-line option (argparse dest) -> generation setting. An option left out takes the
# pipeline folder's default, then the global one (GenerationSettings).
FLAG_SETTINGS = {
    "quality": "quality_level",
    "negative_quality": "negative_quality_level",
    "negative_prompt": "negative_prompt",
    "guidance": "guidance",
    "cfg": "guidance_scale",
    "cfg_rescale": "guidance_rescale",
    "cfg_interval": "guidance_interval",
    "steps": "num_inference_steps",
    "scheduler": "scheduler",
    "eta": "eta",
    "length": "audio_length_in_s",
    "num_waveforms": "num_waveforms_per_prompt",
    "seed": "seed",
    "strength": "strength",
    "inpaint": "inpaint_ranges",
    "repaint_resamples": "repaint_resamples",
    "repaint_jump": "repaint_jump",
    "window": "window_seconds",
    "window_overlap": "window_overlap",
}

# Command-line option -> the pipeline's input-audio argument (not settings: the sidecar
# records the file and its hash).
AUDIO_FLAGS = {
    "continue_audio": "continue_audio",
    "init_audio": "init_audio",
    "inpaint_audio": "inpaint_audio",
}


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``generate`` command."""
    parser = groups.add_parser(
        "generate",
        help="generate music from text prompts at a quality level",
        description="Generates one WAV per prompt and candidate, each with a JSON sidecar "
        "of every setting used (prompt, level, seed, sampler, guidance, model).",
    )
    parser.add_argument("prompt", nargs="*", help="prompt(s) (without quality prefix)")
    parser.add_argument("--prompts-file", type=Path, default=None, help="one prompt per line")
    parser.add_argument("--model", required=True, help="pipeline folder (a run's OUT/pipeline)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--quality", type=float, default=None, help="level 1-5 (floats interpolate)"
    )
    parser.add_argument("--negative-quality", type=float, default=None)
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--guidance", choices=GUIDANCE_MODES, default=None)
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale")
    parser.add_argument(
        "--cfg-rescale",
        type=float,
        default=None,
        help="guidance rescale share in [0, 1] (Lin et al. 2023); tames large --cfg",
    )
    parser.add_argument(
        "--cfg-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="guide only at timesteps LOW..HIGH of 0-1000 (Kynkaeaenniemi et al. 2024); "
        "e.g. 0 800 leaves the noisiest steps unguided",
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--scheduler", default=None, help="ddim, dpmsolver++, unipc, ...")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta")
    parser.add_argument(
        "--length",
        type=float,
        default=None,
        help="seconds of audio; beyond one window (the preset's clip) the piece is made of "
        "overlapping windows; with --continue-audio the total length",
    )
    parser.add_argument("--num-waveforms", type=int, default=None, help="candidates per prompt")
    parser.add_argument("--clap", default=None, help="CLAP model folder for re-ranking")
    parser.add_argument("--seed", type=int, default=None)
    modes = parser.add_argument_group(
        "long-form and editing", "see docs/generation.md; at most one input audio per run"
    )
    modes.add_argument(
        "--continue-audio", type=Path, default=None, metavar="FILE", help="keep FILE and go on"
    )
    modes.add_argument(
        "--init-audio",
        type=Path,
        default=None,
        metavar="FILE",
        help="audio-to-audio from FILE (with --quality 5: enhancement)",
    )
    modes.add_argument(
        "--strength",
        type=float,
        default=None,
        help="audio-to-audio: 0 keeps the input (VAE round trip), 1 ignores it (default 0.5)",
    )
    modes.add_argument(
        "--inpaint-audio", type=Path, default=None, metavar="FILE", help="regenerate parts of FILE"
    )
    modes.add_argument(
        "--inpaint",
        type=float,
        nargs=2,
        action="append",
        default=None,
        metavar=("START", "END"),
        help="seconds of --inpaint-audio to regenerate (repeatable)",
    )
    modes.add_argument(
        "--repaint-resamples",
        type=int,
        default=None,
        help="RePaint passes per stretch of steps when audio is kept (ddim/ddpm; default 1)",
    )
    modes.add_argument(
        "--repaint-jump", type=int, default=None, help="RePaint steps per stretch (default 10)"
    )
    modes.add_argument(
        "--window", type=float, default=None, help="seconds per window (default: the clip)"
    )
    modes.add_argument(
        "--window-overlap",
        type=float,
        default=None,
        help="share of a window the next one repeats as context (default 0.25)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=4, help="prompts per sampler batch"
    )
    parser.add_argument("--device", type=device_name, default=None)
    speed = parser.add_argument_group("speed and memory", "see docs/speed.md")
    add_torch_dtype_argument(speed)
    speed.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer, VAE decoder and vocoder (CUDA graphs on CUDA); "
        "pays off over many clips of one length",
    )
    speed.add_argument(
        "--cpu-offload",
        action="store_true",
        help="keep the models on the CPU, each on --device (default cuda) only while it runs",
    )
    speed.add_argument(
        "--vae-chunk",
        type=positive_int,
        default=None,
        metavar="FRAMES",
        help="decode latents in pieces of FRAMES latent frames (less memory for long pieces)",
    )
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(run=run_generate)


def read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """Prompts from the command line and a file (blank lines and ``#`` comments skipped)."""
    from qamdt.errors import ConfigError

    collected = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise ConfigError(f"{prompts_file}: prompts file not found")
        for line in prompts_file.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                collected.append(line.strip())
    if not collected:
        raise ConfigError("give at least one prompt, or --prompts-file")
    return collected


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings given on the command line, by setting name."""
    given = {
        name: getattr(args, dest)
        for dest, name in FLAG_SETTINGS.items()
        if getattr(args, dest) is not None
    }
    if "guidance_interval" in given:
        given["guidance_interval"] = tuple(given["guidance_interval"])
    if "inpaint_ranges" in given:
        given["inpaint_ranges"] = tuple(tuple(pair) for pair in given["inpaint_ranges"])
    return given


def audio_inputs(args: argparse.Namespace) -> dict[str, Path]:
    """The input-audio files given on the command line, by pipeline argument."""
    return {name: getattr(args, dest) for dest, name in AUDIO_FLAGS.items() if getattr(args, dest)}


def _flag_error(error):
    """The error of a bad setting, naming the option that set it."""
    from qamdt.errors import ConfigError

    flags = {name: dest for dest, name in FLAG_SETTINGS.items()}
    flag = "--" + flags.get(error.field, error.field).replace("_", "-")
    return ConfigError(f"{flag} ({error.field}): {error.reason}")


def run_generate(args: argparse.Namespace) -> int:
    """Runs ``qamdt generate``."""
    from qamdt.errors import ConfigError
    from qamdt.generation.acceleration import parse_dtype
    from qamdt.generation.folder import read_pipeline_index
    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.generation.settings import GenerationSettings, SettingsError
    from qamdt.generation.writer import generate_to_folder

    prompts = read_prompts(args.prompt, args.prompts_file)
    dtype = parse_dtype(args.torch_dtype, "--torch-dtype")
    for dest, path in audio_inputs(args).items():
        if not path.is_file():
            raise ConfigError(f"--{dest.replace('_', '-')}: {path}: file not found")
    defaults = read_pipeline_index(args.model).generation_defaults
    try:
        settings = GenerationSettings.resolve(defaults, explicit_settings(args))
    except SettingsError as error:
        raise _flag_error(error) from None
    if args.cpu_offload:
        pipeline = QAMDTPipeline.from_pretrained(args.model, torch_dtype=dtype)
        pipeline.enable_model_cpu_offload(args.device or "cuda")
    else:
        pipeline = QAMDTPipeline.from_pretrained(args.model, device=args.device, torch_dtype=dtype)
    if args.vae_chunk:
        pipeline.enable_vae_chunking(args.vae_chunk)
    if args.compile:
        pipeline.compile()
    clap = None
    if args.clap:
        from captioning.base import load_clap

        clap = load_clap(args.clap)
    written = generate_to_folder(
        pipeline,
        prompts,
        settings,
        args.out,
        batch_size=args.batch_size,
        clap=clap,
        progress=not args.quiet,
        model=args.model,
        audio_inputs=audio_inputs(args),
    )
    print(json.dumps({"written": len(written), "out": str(args.out)}))
    return 0
