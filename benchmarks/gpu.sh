#!/usr/bin/env bash
# The GPU check, one prepared script: on a machine with a CUDA GPU, from the repository root,
#   bash benchmarks/gpu.sh            # installs if needed, then measures (a few minutes)
# Prints images/s at 256x512 for fp32, bf16, bf16+channels-last(+compile), GPU busy share and
# peak memory, and writes benchmarks/RESULTS_GPU.md. Target: bf16 at least 2x fp32.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet -e '.[dev]'   # the CUDA build of torch from PyPI
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
EVENT_SEG_CACHE="${EVENT_SEG_CACHE:-$(mktemp -d)}" .venv/bin/python benchmarks/bench_gpu.py "$@"
