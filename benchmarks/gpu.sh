#!/usr/bin/env bash
# GPU speed of reslab: ms/iteration of ResNet-20 and ResNet-110 along the eager fp32 path, the
# fast path (speed=fast) and the fast path with fused iterations, the projected time for the
# paper's 64k iterations, peak memory, and ResNet-1202 with and without activation
# checkpointing. With --check, the one-shot check of a GPU machine (under 5 minutes on one
# H200): correctness, speed, the Fashion-MNIST demo through reslab-train, memory; each part's
# table printed and written to --out (default $OUT, else benchmarks/gpu-results/) as soon as
# it is measured; exit 1 if anything failed (failures.md there says what).
#
#   bash benchmarks/gpu.sh --check            # on a machine with a CUDA GPU
#   bash benchmarks/gpu.sh --check --dry-run  # anywhere: the same code, tiny nets on the CPU
#   bash benchmarks/gpu.sh                    # on a GPU: the speed and memory tables alone
#   bash benchmarks/gpu.sh --dry-run          # anywhere: those, tiny, no targets
#   bash benchmarks/gpu.sh --help             # every option (--parts, --budget, --out, ...)
#
# Uses .venv/bin/python when the project's environment exists (scripts/setup.sh), else python3
# (a GPU machine's own, with PyTorch and Lightning; the demo part installs Hydra there from
# .gpu-carry/, made by benchmarks/gpu_carry.sh), else python. reslab comes from src/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
  python=.venv/bin/python
elif command -v python3 >/dev/null; then
  python=python3
else
  python=python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu.py "$@"
