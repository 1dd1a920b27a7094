#!/usr/bin/env bash
# One check of every GPU path (TensorRT, ONNX Runtime CUDA, CUDA training with AMP,
# NCCL DDP) on a machine with an NVIDIA GPU; see docs/GPU.md.
#
#   scripts/gpu_check.sh                      # installs what it needs, writes gpu_check_report.md
#   scripts/gpu_check.sh --report /tmp/r.md   # elsewhere
#   scripts/gpu_check.sh --dry-run            # CPU paths only (also: LECHPE_GPU_CHECK_DRY_RUN=1)
#
# Finishes in under 8 minutes (every step is time-boxed; a failed step is reported and
# the next one runs). Without a GPU it says so, writes the report and exits 0.
set -u
cd "$(dirname "$0")/.."
PYTHON="${LECHPE_PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The whole run stays under 8 minutes even if a step ignores its own time box
# (LECHPE_GPU_CHECK_LIMIT_S: a longer limit for dry runs on a slow, shared CPU).
exec timeout --kill-after=10 "${LECHPE_GPU_CHECK_LIMIT_S:-480}" "$PYTHON" scripts/gpu_check.py "$@"
