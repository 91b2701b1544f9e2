#!/usr/bin/env bash
# Fills .gpu-carry/ (git-ignored) with what `bash benchmarks/gpu.sh --check` needs on a GPU
# machine that has PyTorch, Lightning, torchvision, torchmetrics and rich but no network and no
# Hydra: the wheels of hydra-core, omegaconf, antlr4-python3-runtime (the version omegaconf
# pins; PyPI has only its source, so pip builds the wheel here) and submitit (reslab.cli imports
# it), at the versions of the project's environment, and Fashion-MNIST's four files from
# Debian's dataset-fashion-mnist. Run it here, where pip reaches PyPI; then the GPU machine gets
# the folder with the working tree (the `run` device tool: carry [".gpu-carry"]) and gpu.py
# installs the wheels into .gpu-carry/site when Hydra is not importable there.
#
#   bash benchmarks/gpu_carry.sh    # about 30 MB, most of it Fashion-MNIST
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-}  # the project environment: .venv/bin/python, else python3
[ -n "$python" ] || { [ -x .venv/bin/python ] && python=.venv/bin/python; } || python=python3
carry=.gpu-carry
rm -rf "$carry/wheels" "$carry/site"
mkdir -p "$carry/wheels" "$carry/fashion_mnist"

# name==version of each, as installed in the project's environment (else the versions the
# project was last set up with)
mapfile -t pins < <("$python" - <<'PY'
from importlib import metadata

for name, fallback in (("hydra-core", "1.3.8"), ("omegaconf", "2.3.1"),
                       ("antlr4-python3-runtime", "4.9.3"), ("submitit", "1.5.4")):
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        version = fallback
    print(f"{name}=={version}")
PY
)
echo "wheels: ${pins[*]}"
"$python" -m pip download -q --no-deps --only-binary=:all: -d "$carry/wheels" "${pins[0]}" "${pins[1]}" "${pins[3]}"
"$python" -m pip wheel -q --no-deps -w "$carry/wheels" "${pins[2]}"  # a source archive on PyPI

found=""
if command -v dpkg >/dev/null && dpkg -L dataset-fashion-mnist >/dev/null 2>&1; then
  found=$(dpkg -L dataset-fashion-mnist | grep -E 'idx[13]-ubyte(\.gz)?$' || true)
fi
if [ -z "$found" ]; then
  echo "Fashion-MNIST: Debian's dataset-fashion-mnist is not installed (apt-get install" \
    "dataset-fashion-mnist); gpu.sh --check will train the demo on random images" >&2
else
  cp $found "$carry/fashion_mnist/"
fi
ls -l "$carry/wheels" "$carry/fashion_mnist"
du -sh "$carry"
