#!/usr/bin/env bash
# Prepares a link-time folder for the candle-cuda plugin from PyPI's CUDA
# wheels (which ship only versioned .so files and no libcuda):
#   - unversioned links libcublas.so → libcublas.so.13 etc.;
#   - a stand-in libcuda.so (SONAME libcuda.so.1) exporting the driver API's
#     function names, generated from cuda.h, so the linker resolves them.
# Only for linking: at run time the NVIDIA driver's real libcuda.so.1 is
# used. Never put this folder on a library path at run time.
#
#   scripts/cuda-link-dir.sh <site-packages>/nvidia/cu13 target/cuda-link
set -euo pipefail
cu=$1
out=$2
mkdir -p "$out"
for f in "$cu"/lib/lib*.so.*; do
    base=$(basename "$f")
    ln -sf "$f" "$out/${base%%.so.*}.so"
done
# Every `CUresult CUDAAPI cuName(` in cuda.h (and the _v2 names its macros
# map to) becomes an empty function of the stand-in.
grep -ohE 'CUDAAPI[[:space:]]+cu[A-Za-z0-9_]+' "$cu/include/cuda.h" \
    | awk '{print $2}' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$out/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so" "$out/libcuda_stub.c"
echo "link folder ready: $out"
