#!/usr/bin/env bash
# The main job: sets the machine up if needed, builds the embedded corpus (1,000 clips)
# and describes it. OUT defaults to runs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo}
bash scripts/setup.sh
.venv/bin/qamdt corpus build --out "$out/corpus" --clips 1000 --seed 0
.venv/bin/qamdt corpus describe "$out/corpus"
