#!/usr/bin/env bash
# Device checks of issue 5, for a GPU machine that has no Rust toolchain:
# run from the repository root of a copy of the working tree, with release
# binaries built here beforehand by
#
#   scripts/setup-libtorch.sh --release
#   LIBTORCH=... cargo build --release -p nngeo-backend-tch --bins
#   LIBTORCH=... cargo test --release -p nngeo-backend-tch --test conformance --no-run
#   cp "$(ls -t target/release/deps/conformance-* | grep -v '\.d$' | head -1)" target/release/tch-conformance
#
# and carried: target/release/{nngeo, libnngeo_backend_tch.so,
# nngeo-tch-bench, tch-conformance} (and libnngeo_backend_candle_cuda.so if
# built, see backends/README.md).
#
#   scripts/gpu-check.sh <torch/lib of that machine's torch 2.11.0> [<nvidia/cu13/lib>] [OUT]
#
# DEVICE=cpu runs the same checks on the CPU (a dry run of this script).
# Carry limit: nngeo, the tch plugin and the two test/bench binaries are
# about 40 MB in release; the candle-cuda plugin (53 MB) needs its own call.
set -uo pipefail
dev=${DEVICE:-cuda}
torch_lib=$1
cu13_lib=${2:-}
out=${3:-${OUT:-/tmp/nngeo-gpu}}
mkdir -p "$out"
export LD_LIBRARY_PATH="$torch_lib${cu13_lib:+:$cu13_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin=target/release
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"
"$bin/nngeo" backends 2>&1 | tee "$out/backends.txt"

echo "== conformance tests on $dev (tch)"
NNGEO_TEST_DEVICE=$dev "$bin/tch-conformance" 2>&1 | tail -5 | tee "$out/conformance.txt"

echo "== fim_zoo: tch $dev, candle cpu (f64)"
"$bin/nngeo" exec experiments/fim_zoo.ngx --backend tch --device "$dev" --out "$out/fim_zoo_tch_cuda" --overwrite >/dev/null
"$bin/nngeo" exec experiments/fim_zoo.ngx --backend candle --out "$out/fim_zoo_candle" --overwrite >/dev/null
if [ "$dev" != cpu ] && [ -e "$bin/libnngeo_backend_candle_cuda.so" ]; then
    "$bin/nngeo" exec experiments/fim_zoo.ngx --backend candle-cuda --device cuda --out "$out/fim_zoo_candle_cuda" --overwrite >/dev/null
fi
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(d):
    return [json.loads(l) for l in open(os.path.join(out, d, "results.jsonl"))]
def flat(v):
    if isinstance(v, bool): return []
    if isinstance(v, (int, float)): return [float(v)]
    if isinstance(v, list): return [x for e in v for x in flat(e)]
    if isinstance(v, dict): return [x for k in sorted(v) for x in flat(v[k])]
    return []
ref = load("fim_zoo_candle")
for d in ("fim_zoo_tch_cuda", "fim_zoo_candle_cuda"):
    if not os.path.exists(os.path.join(out, d)): continue
    worst = (0.0, "")
    for a, b in zip(load(d), ref):
        if "time" in a["key"] or a["key"].startswith("memory"): continue
        x, y = flat(a["value"]), flat(b["value"])
        scale = max([abs(t) for t in y] + [1e-12])
        if a["key"].startswith("rel_error"): scale = max(scale, 1.0)
        r = max([abs(p - q) / scale for p, q in zip(x, y)] + [0.0])
        worst = max(worst, (r, a["key"]))
    print(f"{d} vs candle cpu: worst relative difference {worst[0]:.2e} ({worst[1]})")
PY

echo "== experiments on $dev (tch)"
for e in ntk_align ekfac_optim lazy_vs_hasty; do
    /usr/bin/time -f "$e: %e s, %M KB" "$bin/nngeo" exec "experiments/$e.ngx" --backend tch --device "$dev" --out "$out/$e" --overwrite >/dev/null
done

echo "== benchmarks (tch on $dev; candle on cpu in the same run)"
"$bin/nngeo-tch-bench" --device "$dev" --repeats 5 2>&1 | tee "$out/bench_cuda.txt"
