"""``qamdt generate``: music from text at a chosen quality level."""

from __future__ import annotations

import argparse
import json
import re
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


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def run_generate(args: argparse.Namespace) -> int:
    """Runs ``qamdt generate``."""
    import numpy as np
    import torch

    from qamdt.audio_io import save_audio
    from qamdt.generation.pipeline import QAMDTPipeline

    prompts = read_prompts(args.prompt, args.prompts_file)
    pipeline = QAMDTPipeline.from_pretrained(args.model, device=args.device)
    clap = None
    if args.clap:
        from captioning.base import load_clap

        clap = load_clap(args.clap)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start : start + args.batch_size]
        # One seed per batch position, so a prompt's audio does not depend on its batch.
        seed = args.seed + start
        output = pipeline(
            chunk,
            negative_prompt=args.negative_prompt,
            quality_level=args.quality,
            negative_quality_level=args.negative_quality,
            guidance=args.guidance,
            guidance_scale=args.cfg,
            num_inference_steps=args.steps,
            scheduler=args.scheduler,
            eta=args.eta,
            audio_length_in_s=args.length,
            num_waveforms_per_prompt=args.num_waveforms,
            clap=clap,
            generator=torch.Generator().manual_seed(seed),
            progress=not args.quiet,
        )
        for i, (audio, prompt, text) in enumerate(
            zip(output.audios, output.prompts, output.texts, strict=True)
        ):
            index = start * args.num_waveforms + i
            stem = args.out / f"{index:04d}_{slug(prompt)}"
            save_audio(stem.with_suffix(".wav"), np.asarray(audio), output.sample_rate)
            sidecar = {
                "prompt": prompt,
                "text": text,
                "negative_prompt": args.negative_prompt,
                "quality_level": args.quality,
                "negative_quality_level": args.negative_quality,
                "guidance": args.guidance,
                "guidance_scale": args.cfg,
                "steps": args.steps,
                "scheduler": args.scheduler,
                "eta": args.eta,
                "seed": seed,
                "batch_index": i,
                "num_waveforms_per_prompt": args.num_waveforms,
                "rank": i % args.num_waveforms if clap is not None else None,
                "clap_score": None if output.clap_scores is None else output.clap_scores[i],
                "audio_length_in_s": args.length,
                "sample_rate": output.sample_rate,
                "model": str(Path(args.model).resolve()),
            }
            stem.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
            written.append(str(stem.with_suffix(".wav")))
    print(json.dumps({"written": len(written), "out": str(args.out)}))
    return 0
