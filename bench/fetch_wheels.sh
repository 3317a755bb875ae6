#!/usr/bin/env bash
# Wheels for the GPU machine, which has no network and lacks ml_collections (vision_jax
# reads its configs with it): into wheels/ (git-ignored), one folder to carry along.
# absl-py and PyYAML, its dependencies, come with flax, chex and orbax there; their wheels
# (CPython 3.12, manylinux x86-64: that machine's Python) are a fallback in case not.
#   bash bench/fetch_wheels.sh                 # here, where PyPI is reachable
#   pip install --no-index --find-links wheels ml_collections   # there
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p wheels
pip download --quiet --no-deps --only-binary=:all: -d wheels ml_collections==1.1.0
pip download --quiet --no-deps --only-binary=:all: -d wheels --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 absl-py==2.5.1 PyYAML==6.0.3
ls -l wheels
du -sh wheels
