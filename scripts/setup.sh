#!/usr/bin/env bash
# Sets reslab up on a fresh Debian/Ubuntu machine: Fashion-MNIST from Debian (real data, offline),
# SLURM and munge (the tests start a private one-node cluster), strace (the tests deliver signals
# at chosen system calls with it), a virtual environment in .venv,
# and the package with its dev tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: Fashion-MNIST, and SLURM with munge for the private one-node cluster that
# tests/test_slurm.py starts (tests/slurm_cluster.py; about 20 s to install), and strace.
packages=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || packages+=(dataset-fashion-mnist)
[ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && command -v sbatch >/dev/null || packages+=(slurm-wlm)
[ -x /usr/sbin/munged ] && [ -x /usr/sbin/mungekey ] || packages+=(munge)
command -v strace >/dev/null || packages+=(strace)
if [ ${#packages[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${packages[@]}"
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q -e '.[dev]'
echo "reslab is set up in $(pwd)/.venv"
