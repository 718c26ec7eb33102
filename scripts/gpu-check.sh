#!/usr/bin/env bash
# The device checks, for a GPU machine that has no Rust toolchain: run from
# the repository root of a copy of the working tree that carries
# target/gpu/bundle.tar.xz (made here by scripts/gpu-bundle.sh).
#
#   scripts/gpu-check.sh [all|correct|bench|mlp|resnet] [OUT]
#
# correct: `nngeo backends`, the shared conformance suite on tch-cuda,
#   experiments/fim_zoo.ngx on tch-cuda (on its GPU paths and, with
#   NNGEO_TCH_DEVICE_PATHS=off, the host's) and candle-cuda, and a reduced
#   lazy_vs_hasty (training) on both tch paths, against candle on the CPU
#   (every result, worst relative difference).
# bench: every bench case on tch-cuda and candle-cuda next to NNGeometry on
#   the same GPU, in the same run (scripts/bench_vs_nngeometry.py), with
#   $ROUNDS rounds (default 1): `mlp` the MLP cases ($CASES), `resnet` the
#   ResNet18 ones ($RESNET_CASES, each on its own); raw times go to
#   OUT/bench-*.json so that rounds of several calls can be pooled; the
#   ResNet18 SGD step also with its update on the host ($NNGEO_BENCH_UPDATE).
# The torch and CUDA libraries are the machine's own Python torch 2.11.0
# (the same PyPI build the plugin was linked against). DEVICE=cpu runs the
# same checks on the CPU (a dry run of this script).
set -uo pipefail
what=${1:-all}
out=${2:-${OUT:-/tmp/nngeo-gpu}}
dev=${DEVICE:-cuda}
mkdir -p "$out"
g=target/gpu
if [ ! -x "$g/bin/nngeo" ]; then
    xz -dc "$g/bundle.tar.xz" | tar -C "$g" -xf -
fi
bin=$g/bin
PY=${PYTHON:-python3}
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export LD_LIBRARY_PATH="$site/torch/lib:$site/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PWD/$g/py${PYTHONPATH:+:$PYTHONPATH}"
export NNGEO_PLUGIN_PATH="$PWD/$bin"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

if [ "$what" = all ] || [ "$what" = correct ]; then
    stamp machine
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"
    "$bin/nngeo" backends 2>&1 | tee "$out/backends.txt"

    stamp "conformance suite on tch $dev"
    NNGEO_TEST_DEVICE=$dev timeout 240 "$bin/tch-conformance" >"$out/conformance.txt" 2>&1
    echo "rc $?"; grep -E "^test result|FAILED|panicked" "$out/conformance.txt" | head -20

    stamp "fim_zoo: tch $dev, candle-cuda $dev, candle cpu (f64)"
    zoo() {
        timeout 180 "$bin/nngeo" exec experiments/fim_zoo.ngx --backend "$1" --device "$2" \
            --out "$out/$3" --overwrite >"$out/$3.log" 2>&1
        echo "$3: rc $?"
    }
    zoo candle cpu fim_zoo_candle
    zoo tch "$dev" fim_zoo_tch
    # The other side of tch's paths: the host's on a GPU, the GPU's on a
    # CPU (a dry run of them).
    if [ "$dev" != cpu ]; then paths=off; else paths=on; fi
    NNGEO_TCH_DEVICE_PATHS=$paths zoo tch "$dev" fim_zoo_tch_paths
    if [ "$dev" != cpu ]; then zoo candle-cuda "$dev" fim_zoo_candle_cuda; fi
    compare() {
    "$PY" - "$out" "$@" <<'PY'
import json, sys, os
out, ref_dir, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
def load(d):
    return [json.loads(l) for l in open(os.path.join(out, d, "results.jsonl"))]
def flat(v):
    if isinstance(v, bool): return []
    if isinstance(v, (int, float)): return [float(v)]
    if isinstance(v, list): return [x for e in v for x in flat(e)]
    if isinstance(v, dict): return [x for k in sorted(v) for x in flat(v[k])]
    return []
ref = load(ref_dir)
for d in dirs:
    if not os.path.exists(os.path.join(out, d, "results.jsonl")): continue
    got = load(d)
    worst, n = (0.0, ""), 0
    for a, b in zip(got, ref):
        if "time" in a["key"] or a["key"].startswith("memory"): continue
        x, y = flat(a["value"]), flat(b["value"])
        scale = max([abs(t) for t in y] + [1e-12])
        if a["key"].startswith("rel_error"): scale = max(scale, 1.0)
        r = max([abs(p - q) / scale for p, q in zip(x, y)] + [0.0])
        worst, n = max(worst, (r, a["key"])), n + 1
    print(f"{d} vs {ref_dir}: {n} of {len(ref)} results compared, worst relative difference {worst[0]:.2e} ({worst[1]})")
PY
    }
    compare fim_zoo_candle fim_zoo_tch fim_zoo_tch_paths fim_zoo_candle_cuda

    # Training on both of tch's paths (the optimiser's update on the
    # device or on the host) against candle on the CPU, f64: lazy_vs_hasty
    # reduced as backends/tch/tests/cli_cross_backend.rs runs it.
    stamp "lazy_vs_hasty (reduced, f64): tch $dev on both paths, candle cpu"
    sed -e 's/take(1000, random, seed = 1)/take(200, random, seed = 1)/' \
        -e 's/steps = 3000/steps = 60/' -e 's/every 100 steps/every 20 steps/' \
        experiments/lazy_vs_hasty.ngx >"$out/lvh.ngx"
    lvh() {
        timeout 180 "$bin/nngeo" exec "$out/lvh.ngx" --backend "$1" --device "$2" --dtype f64 \
            --out "$out/$3" --overwrite >"$out/$3.log" 2>&1
        echo "$3: rc $?"
    }
    lvh candle cpu lvh_candle
    lvh tch "$dev" lvh_tch
    NNGEO_TCH_DEVICE_PATHS=$paths lvh tch "$dev" lvh_tch_paths
    compare lvh_candle lvh_tch lvh_tch_paths
fi

bench() {
    # One comparison of the cases named, in its own process with its own
    # time limit, so that a slow case cannot take the others' figures.
    local candle=candle args=()
    if [ "$dev" != cpu ]; then candle=candle-cuda; fi
    for c in "$@"; do args+=(--case "$c"); done
    stamp "benchmarks: $* (tch and $candle on $dev beside NNGeometry on $dev)"
    "$PY" scripts/bench_vs_nngeometry.py --nngeo "$bin/nngeo" --tch-bench "$bin/nngeo-tch-bench" \
        --python "$PY" --device "$dev" --candle "$candle" --rounds "${ROUNDS:-1}" \
        --repeats "${REPEATS:-3}" --timeout "${SIDE_TIMEOUT:-240}" \
        --json "$out/bench-$(date -u +%H%M%S)-$1.json" "${args[@]}" 2>&1 | tee -a "$out/bench.txt"
}
if [ "$what" = all ] || [ "$what" = bench ] || [ "$what" = mlp ]; then
    bench ${CASES:-kfac ekfac-refit diag dense ntk-1000 exec-kfac exec-ekfac-refit exec-diag exec-ntk-1000}
fi
if [ "$what" = all ] || [ "$what" = bench ] || [ "$what" = resnet ]; then
    for c in ${RESNET_CASES:-resnet18-ntk-100 exec-resnet18-ntk-100 resnet18-sgd-128 exec-resnet18-kfac-1000 exec-resnet18-ekfac-refit-1000}; do
        bench "$c"
    done
    # The same SGD step with the update on the host (an f64 copy of the
    # weights, re-uploaded), what training did before it moved to the GPU.
    for u in device host; do
        stamp "resnet18-sgd-128 on tch $dev, update on the $u"
        NNGEO_BENCH_UPDATE=$u timeout 240 "$bin/nngeo-tch-bench" --device "$dev" --no-candle \
            --repeats "${REPEATS:-3}" --case resnet18-sgd-128 2>&1 | tee -a "$out/bench.txt"
    done
fi
stamp done
