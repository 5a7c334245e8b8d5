#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach a package index (issue 16's `bench/gpu_check.py`).
#
#   bash scripts/device_wheels.sh [DIR]      # default DIR: .whl (git-ignored)
#
# The target seen so far (a lent H200, 2026-11) runs Python 3.12 with torch 2.11 + Triton 3.6, accelerate,
# einops, scipy, tensorboard, safetensors and pytest already installed. What this project needs beyond
# that: webdataset (+ braceexpand), soundfile (+ cffi, pycparser; the wheel bundles libsndfile) and
# fla-core (the `gpu` extra: the RWKV-7 Triton kernel). mamba-ssm and causal-conv1d are CUDA source
# builds (PyPI has no wheels): without them SSAMBA runs its pure path, and their tests are skipped.
#
# On the GPU machine, from the repository root (the wheels travel with the tree; no network needed):
#
#   PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --wheels .whl --out report.md
#
# (the device tool: `run` with carry [".whl"] and that command, `--out $OUT/gpu_report.md`).
#
# Set PYVER (default 3.12) for another Python there.
set -euo pipefail
dir=${1:-.whl}
pyver=${PYVER:-3.12}
mkdir -p "$dir"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# Versions: the ones this project's CPU tests run with (.venv), so both machines run the same code.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${platforms[@]}" -d "$dir" \
  webdataset==1.0.2 braceexpand==0.1.7 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 fla-core==0.6.0
ls -l "$dir"
du -sh "$dir"
