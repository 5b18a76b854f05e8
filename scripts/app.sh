#!/usr/bin/env bash
# Serves the web app (qamdt app) on the demo's models: sets the machine up, makes the
# models with `qamdt demo` where they are not finished yet (about 30 minutes on 2 cores;
# QUICK=1 makes the quick run's small models in about two minutes), then starts the app on
# http://127.0.0.1:7860 (extra options go to qamdt app, e.g. --port 7861).
# Usage: bash scripts/app.sh [OUT] [qamdt app options]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo}
shift || true
bash scripts/setup.sh
quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)
# A finished folder is skipped stage by stage in seconds.
.venv/bin/qamdt demo --out "$out" "${quick[@]}"
models="$out/models"
# The run's own settings give the app the judge that scores generated audio (models/judge,
# or models/mos where the run has none) and the models' dtypes as the demo runs them (the
# transformer and the vocoder's residual blocks in bfloat16 where the CPU has bfloat16
# instructions, else float32); --torch-dtype after OUT overrides them.
read -r dtypes judge < <(.venv/bin/python - "$out" <<'EOF'
import sys
from pathlib import Path

from qamdt.demo.common import judge_model
from qamdt.demo.settings import DemoSettings
from qamdt.demo.stages import recorded_settings
from qamdt.generation.acceleration import format_dtype

out = Path(sys.argv[1])
settings = DemoSettings.from_recorded(recorded_settings(out), log=lambda _: None)
print(format_dtype(settings.pipeline_dtypes()), judge_model(out, settings))
EOF
)
exec .venv/bin/qamdt app --model "$models/pipeline" --mos "$judge" --clap "$models/clap" \
  --captioner "$models/captioner" --manifest "$out/corpus/manifest.jsonl" \
  --torch-dtype "$dtypes" "$@"
