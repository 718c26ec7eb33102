#!/usr/bin/env bash
# Sets up the libtorch backend: a git-ignored Python venv holding PyPI's
# torch 2.11.0 wheel (libtorch comes only from there), then the `tch` plugin
# built against it. Idempotent: a second run only rebuilds what changed.
#
#   scripts/setup-libtorch.sh [--release] [--cuda]
#
# --cuda also installs torch's CUDA dependencies (cuBLAS, cuDNN, NCCL…,
# about 3 GB of wheels) so that libtorch_cuda.so loads and `--device cuda`
# works on a machine with an NVIDIA driver; without them the plugin runs on
# the CPU and refuses CUDA with the loader's reason.
#
# Afterwards `nngeo exec FILE --backend tch` finds the plugin next to the
# `nngeo` executable of the same profile (target/debug or target/release);
# the plugin carries the venv's torch/lib as its RUNPATH, so nothing needs
# to be set by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=()
cuda=0
for arg in "$@"; do
    case "$arg" in
        --release) profile=(--release) ;;
        --cuda) cuda=1 ;;
        *) echo "usage: $0 [--release] [--cuda]" >&2; exit 2 ;;
    esac
done

TORCH_VERSION=2.11.0
VENV=${NNGEO_TORCH_VENV:-.venv-torch}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
torch_dir="$site/torch"

have=$(sed -n "s/^__version__ = '\([^']*\)'.*/\1/p" "$torch_dir/version.py" 2>/dev/null || true)
if [ "${have%%+*}" != "$TORCH_VERSION" ]; then
    # PyPI has no CPU-only torch for Linux; the default wheel plus the two
    # CUDA libraries that libtorch_cpu itself links (runtime, CUPTI) is
    # enough for the CPU, without the 2.7 GB of other CUDA wheels.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
        "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
    have=$(sed -n "s/^__version__ = '\([^']*\)'.*/\1/p" "$torch_dir/version.py")
fi
# tch 0.24 is written against exactly this libtorch; building through
# LIBTORCH skips tch's own version check, so check here.
if [ "${have%%+*}" != "$TORCH_VERSION" ]; then
    echo "error: $torch_dir has torch $have, tch 0.24 needs $TORCH_VERSION" >&2
    exit 1
fi

if [ "$cuda" = 1 ]; then
    # The same torch, now with its dependencies: pip only adds what is
    # missing (the nvidia-* wheels), and nothing on a second run.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi

export LIBTORCH="$(cd "$torch_dir" && pwd)"
cargo build "${profile[@]}" -p nngeo-backend-tch
echo "libtorch $have at $LIBTORCH; plugin built (${profile[*]:-debug})"
