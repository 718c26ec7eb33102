#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh runs on a GPU machine that has no Rust
# toolchain and no package registry into one archive (about 25 MB, under
# the device tool's 64 MiB carry limit): the release `nngeo`, the tch
# plugin, `nngeo-tch-bench`, the tch conformance tests, the candle-cuda
# plugin when built (backends/README.md), and NNGeometry's Python package
# for the same-run comparison.
#
#   LIBTORCH=<venv>/.../torch scripts/gpu-bundle.sh <target dir> [<candle-cuda .so>] [<site-packages with nngeometry>]
#
# Writes target/gpu/bundle.tar.xz; carry `target/gpu`, then on the machine:
#   scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: $0 <target dir> [candle-cuda .so] [site-packages]}
cuda_so=${2:-}
site=${3:-}
: "${LIBTORCH:?set LIBTORCH to the torch 2.11.0 the tch plugin builds against}"

cargo build --quiet --release --target-dir "$target"
# `--lib` too: the plugin is not built (nor refreshed) by `--bins` alone.
cargo build --quiet --release --target-dir "$target" -p nngeo-backend-tch --bins --lib
cargo test --quiet --release --target-dir "$target" -p nngeo-backend-tch --test conformance --no-run 2>/dev/null
conf=$(ls -t "$target"/release/deps/conformance-* | grep -v '\.d$' | head -1)

stage=target/gpu/stage
rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/py"
cp "$target/release/nngeo" "$target/release/libnngeo_backend_tch.so" \
    "$target/release/nngeo-tch-bench" "$stage/bin/"
cp "$conf" "$stage/bin/tch-conformance"
if [ -n "$cuda_so" ]; then
    cp "$cuda_so" "$stage/bin/"
fi
if [ -n "$site" ] && [ -d "$site/nngeometry" ]; then
    cp -r "$site/nngeometry" "$stage/py/"
    find "$stage/py" -name __pycache__ -prune -exec rm -rf {} +
fi
tar -C "$stage" -cf - bin py | xz -T0 -6 > target/gpu/bundle.tar.xz
rm -rf "$stage"
ls -l target/gpu/bundle.tar.xz
