#!/usr/bin/env bash
# The main job: sets the machine up if needed, then runs the whole pipeline on the
# embedded corpus (qamdt demo): corpus, MOS predictor, p-MOS levels, captioner, CLAP,
# caption refinement, VAE, the quality-aware MDT and its baseline, generation, evaluation
# and the report, whose path it prints. Finished stages are skipped on a re-run.
# Usage: scripts/demo.sh [OUT] [qamdt demo options, e.g. --quick]; OUT defaults to runs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo}
shift || true
bash scripts/setup.sh
.venv/bin/qamdt demo --out "$out" "$@"
