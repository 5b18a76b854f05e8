"""``qamdt app``: generation, scoring and dataset browsing in the browser."""

from __future__ import annotations

import argparse
import os

from qamdt.cli.arguments import add_torch_dtype_argument

# Set before gradio is imported: no telemetry, no version check, no hub access.
OFFLINE_ENVIRONMENT = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def register(groups: argparse._SubParsersAction) -> None:
    """Adds the ``app`` command."""
    parser = groups.add_parser(
        "app",
        help="serve generation, scoring and dataset browsing in the browser",
        description="Starts a local web app (Gradio) on the given models: Generate, Edit, "
        "Score and Dataset tabs. Needs the 'app' extra: pip install -e '.[app]'.",
    )
    parser.add_argument("--model", required=True, help="pipeline folder (a run's models/pipeline)")
    parser.add_argument("--mos", default=None, help="MOS model folder: p-MOS of every clip")
    parser.add_argument("--clap", default=None, help="CLAP scorer folder: scores and re-ranking")
    parser.add_argument("--captioner", default=None, help="captioner folder: captions uploads")
    parser.add_argument("--manifest", default=None, help="manifest (JSONL) for the Dataset tab")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    add_torch_dtype_argument(parser)
    parser.set_defaults(run=run_app)


def run_app(args: argparse.Namespace) -> int:
    """Runs ``qamdt app`` until interrupted."""
    from qamdt.errors import ConfigError
    from qamdt.generation.acceleration import parse_dtype

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: must be within 1..65535, got {args.port}")
    dtype = parse_dtype(args.torch_dtype, "--torch-dtype")
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError(
            "qamdt app needs Gradio, from the 'app' extra: pip install -e '.[app]' "
            "(bash scripts/setup.sh installs it)"
        ) from None
    from qamdt.app.models import AppModels
    from qamdt.app.ui import build_app

    models = AppModels.load(
        args.model,
        mos=args.mos,
        clap=args.clap,
        captioner=args.captioner,
        manifest=args.manifest,
        torch_dtype=dtype,
    )
    app = build_app(models)
    print(f"qamdt app: serving on http://{args.host}:{args.port}", flush=True)
    app.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        ssr_mode=False,
        show_error=False,
        max_file_size="100mb",
        quiet=True,
    )
    return 0
