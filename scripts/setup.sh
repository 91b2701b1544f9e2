#!/usr/bin/env bash
# Sets reslab up on a fresh Debian/Ubuntu machine: Fashion-MNIST from Debian (real data, offline),
# a virtual environment in .venv, and the package with its dev tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q dataset-fashion-mnist
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q -e '.[dev]'
echo "reslab is set up in $(pwd)/.venv"
