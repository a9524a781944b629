#!/usr/bin/env bash
# The GPU check, one prepared script (no make, no network): on a machine with a CUDA GPU, from
# anywhere,
#   bash benchmarks/gpu.sh [bench_gpu.py options]      # e.g. --no-compile, --modes fp32,bf16
# Writes an EventScape-size synthetic set, then measures at 256x512, batch 16, 100 counted steps
# per figure: step-only and end-to-end images/s (raw files and prepared cache, 16 workers) for
# fp32, bf16, bf16+channels-last and +compile, loader-only samples/s, voxel_grid_batch G events/s,
# first-epoch / later-epoch time; prints them beside their targets and writes
# benchmarks/RESULTS_GPU.md (rewritten after every section).
#
# Python: .venv/bin/python where there is one (a normal checkout after `make install`);
# otherwise python3 with torch preinstalled (the GPU machine) plus the wheels in .whl/, which
# `pip download -d .whl <package>...` fetches beforehand where there is network; they are
# installed into /tmp/site and put on PYTHONPATH.
#
# Time: the whole script, install included, stays within BUDGET_S seconds (default 285, under
# 5 minutes): bench_gpu.py gets what is left as --budget-s and skips later sections (compile
# first) rather than overrun; a hard timeout stops it 10 s past that.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-285}
SECONDS=0

if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" NO_ALBUMENTATIONS_UPDATE=1
  if ! $PY -c 'import hydra, omegaconf, segmentation_models_pytorch, albumentations' 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
      echo "gpu.sh: no .venv here, and no wheels in .whl/ for what python3 lacks (hydra, smp," \
           "albumentations, ...): fetch them with pip download -d .whl <package>... where there" \
           "is network and send .whl/ along, or make install" >&2
      exit 2
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  fi
fi
echo "python: $PY ($($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

left=$((BUDGET_S - SECONDS))
if [ "$left" -lt 60 ]; then
  echo "gpu.sh: only ${left} s of BUDGET_S=${BUDGET_S} left after the install" >&2
  exit 2
fi
# Options given to gpu.sh come last: a --budget-s of theirs wins.
status=0
timeout -k 5 $((left + 10)) "$PY" benchmarks/bench_gpu.py --budget-s "$left" "$@" || status=$?
echo "gpu.sh: ${SECONDS} s in all (budget ${BUDGET_S} s), exit status ${status}"
exit "$status"
