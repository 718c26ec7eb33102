#!/usr/bin/env bash
# The same-run comparison with NNGeometry: every `nngeo bench` case on
# candle and on libtorch (tch), and NNGeometry's side of it on the same
# sizes, interleaved round by round, printed as one table of medians with
# the ratios. Sets up (idempotently) the libtorch venv of
# scripts/setup-libtorch.sh, adds `nngeometry` to it (`--no-deps`: it
# imports only torch), and builds the release binaries.
#
#   scripts/bench-vs-nngeometry.sh [--rounds 3] [--repeats 3] [--case NAME]... [--no-tch]
#
# Defaults: the MLP cases and their `exec-*` counterparts (the path users
# take). ResNet18 cases run when named (`--case resnet18-kfac`), at the width
# of NNGEO_BENCH_WIDTH (default 64, torchvision's). Run it on an idle machine
# with RAYON_NUM_THREADS set to the cores you give both sides.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${NNGEO_TORCH_VENV:-.venv-torch}
scripts/setup-libtorch.sh --release >/dev/null
# The libtorch venv holds torch without its dependencies (the Rust side
# needs only libtorch_cpu); Python's `import torch` also loads the CUDA
# libraries and needs torch's pure-Python dependencies: `--cuda` adds both
# (about 3 GB of wheels, once).
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    scripts/setup-libtorch.sh --release --cuda >/dev/null
fi
if ! "$VENV/bin/python" -c 'import nngeometry' 2>/dev/null; then
    # --no-deps: it would pull torchvision, which it does not import.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps nngeometry numpy
fi
LIBTORCH="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torch"
export LIBTORCH
cargo build --quiet --release
cargo build --quiet --release -p nngeo-backend-tch --bins
target=$(cargo metadata --format-version 1 --no-deps |
    "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$VENV/bin/python" scripts/bench_vs_nngeometry.py \
    --nngeo "$target/release/nngeo" \
    --tch-bench "$target/release/nngeo-tch-bench" \
    --python "$VENV/bin/python" "$@"
