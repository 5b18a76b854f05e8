"""``qamdt generate``: music from text at a chosen quality level."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


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
    parser.add_argument("--quality", type=float, default=5.0, help="level 1-5 (floats interpolate)")
    parser.add_argument("--negative-quality", type=float, default=None)
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument(
        "--guidance", choices=("quality", "released", "negative-prompt"), default="quality"
    )
    parser.add_argument("--cfg", type=float, default=3.5, help="guidance scale")
    parser.add_argument(
        "--cfg-rescale",
        type=float,
        default=0.0,
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
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--scheduler", default="ddim", help="ddim, dpmsolver++, unipc, ...")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    parser.add_argument("--length", type=float, default=None, help="seconds of audio")
    parser.add_argument("--num-waveforms", type=int, default=1, help="candidates per prompt")
    parser.add_argument("--clap", default=None, help="CLAP model folder for re-ranking")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per sampler batch")
    parser.add_argument("--device", default=None)
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


def run_generate(args: argparse.Namespace) -> int:
    """Runs ``qamdt generate``."""
    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.generation.writer import GenerationRequest, generate_to_folder

    prompts = read_prompts(args.prompt, args.prompts_file)
    pipeline = QAMDTPipeline.from_pretrained(args.model, device=args.device)
    clap = None
    if args.clap:
        from captioning.base import load_clap

        clap = load_clap(args.clap)
    request = GenerationRequest(
        model=args.model,
        quality_level=args.quality,
        negative_prompt=args.negative_prompt,
        negative_quality_level=args.negative_quality,
        guidance=args.guidance,
        guidance_scale=args.cfg,
        guidance_rescale=args.cfg_rescale,
        guidance_interval=tuple(args.cfg_interval) if args.cfg_interval else None,
        steps=args.steps,
        scheduler=args.scheduler,
        eta=args.eta,
        audio_length_in_s=args.length,
        num_waveforms=args.num_waveforms,
    )
    written = generate_to_folder(
        pipeline,
        prompts,
        request,
        args.out,
        seed=args.seed,
        batch_size=args.batch_size,
        clap=clap,
        progress=not args.quiet,
    )
    print(json.dumps({"written": len(written), "out": str(args.out)}))
    return 0
