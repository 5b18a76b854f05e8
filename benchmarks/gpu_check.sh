#!/usr/bin/env bash
# The GPU figures of docs/speed.md in one run (about 8 minutes on one H100/H200): the
# `paper` preset's generation (10 s clip, DDIM 200 and DPM-Solver++ 25 with guidance, bf16
# end to end, eager and compiled side by side, with the largest eager-compiled latent
# difference) and its training step (batch 32, bf16 autocast, eager and compiled, MFU).
# Writes generate.txt, train.txt, train.json and gpu.txt into $OUT (default /tmp/gpu-check).
#
# Usage, from the repository root: bash benchmarks/gpu_check.sh
# On a machine whose Python lacks the project's dependencies, put their wheels in .whl/
# first; they are installed into /tmp/site (nothing else is touched). The lent H200 image
# (Python 3.12, torch, transformers, accelerate, scipy) needs these, fetched where pip works:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 soundfile==0.14.0 \
#     soxr==1.1.0 cffi pycparser importlib_metadata zipp
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
timeout 330 python3 benchmarks/bench_generate.py --config configs/mdt/paper.yaml \
  --torch-dtype bfloat16 --compile 2>&1 | tee "$out/generate.txt" || true
timeout 200 python3 benchmarks/bench_train.py --config configs/mdt/paper.yaml --batch 32 \
  --precision bf16 --variants reference --compile --peak-tflops 989 --steps 10 \
  --json "$out/train.json" 2>&1 | tee "$out/train.txt" || true
