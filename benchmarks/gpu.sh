#!/usr/bin/env bash
# GPU speed of reslab: ms/iteration of ResNet-20 and ResNet-110 along the eager fp32 path and the
# fast path (speed=fast), the projected time for the paper's 64k iterations, peak memory, and
# ResNet-1202 with and without activation checkpointing. Under 5 minutes on one GPU.
#
#   bash benchmarks/gpu.sh             # on a machine with a CUDA GPU
#   bash benchmarks/gpu.sh --dry-run   # anywhere: a few CPU iterations of tiny nets, no targets
#
# Uses .venv/bin/python when the project's environment exists (scripts/setup.sh), else python.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python
exec "$python" benchmarks/gpu.py "$@"
