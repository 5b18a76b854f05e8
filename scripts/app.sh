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
# The app scores generated audio with the demo's judge (models/mos where the run has none).
judge="$models/judge"
[ -d "$judge" ] || judge="$models/mos"
# The models' dtypes as the demo runs them (the transformer and the vocoder's residual
# blocks in bfloat16 where the CPU has bfloat16 instructions, else float32); --torch-dtype
# after OUT overrides it.
dtypes=$(.venv/bin/python -c 'from qamdt.demo.settings import DemoSettings
dtypes = DemoSettings.full().pipeline_dtypes().items()
print(",".join(name + "=" + str(dtype).split(".")[-1] for name, dtype in dtypes))')
exec .venv/bin/qamdt app --model "$models/pipeline" --mos "$judge" --clap "$models/clap" \
  --captioner "$models/captioner" --manifest "$out/corpus/manifest.jsonl" \
  --torch-dtype "$dtypes" "$@"
