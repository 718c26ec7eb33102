#!/usr/bin/env python3
"""Runs `nngeo bench` (candle), `nngeo-tch-bench` (libtorch) and
scripts/nngeometry_bench.py case by case, interleaved over rounds, and
prints one table of medians with NNGeometry's time over each backend's.
Called by scripts/bench-vs-nngeometry.sh, which builds what it runs."""
import argparse
import os
import statistics
import subprocess
import sys

MLP = ["kfac", "ekfac", "ekfac-refit", "diag", "blockdiag", "dense", "ntk-100", "ntk-1000", "ntk-2000"]
EXEC = ["exec-kfac", "exec-ekfac-refit", "exec-diag", "exec-kfac-5000", "exec-ntk-1000", "exec-ntk-2000"]


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(f"warning: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-400:]}\n")
        return None
    return p.stdout


def column(text, case, index):
    """The `index`-th whitespace field of the table line of `case`."""
    for line in (text or "").splitlines():
        f = line.split()
        if f and f[0] == case:
            try:
                return float(f[index])
            except (ValueError, IndexError):
                return None
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nngeo", required=True)
    ap.add_argument("--tch-bench", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--case", action="append")
    ap.add_argument("--no-tch", action="store_true")
    a = ap.parse_args()
    cases = a.case or MLP + EXEC
    width = os.environ.get("NNGEO_BENCH_WIDTH", "64")
    here = os.path.dirname(os.path.abspath(__file__))
    reps = ["--repeats", str(a.repeats)]
    times = {c: {"nngeometry": [], "candle": [], "tch": []} for c in cases}
    for r in range(a.rounds):
        for c in cases:
            def ours():
                if c.startswith("exec-") or a.no_tch:
                    out = run([a.nngeo, "bench", "--case", c] + reps)
                    times[c]["candle"].append(column(out, c, 1))
                    if not a.no_tch:
                        env = dict(os.environ, NNGEO_BACKEND="tch")
                        out = run([a.nngeo, "bench", "--case", c] + reps, env)
                        times[c]["tch"].append(column(out, c, 1))
                else:
                    out = run([a.tch_bench, "--case", c] + reps)
                    times[c]["tch"].append(column(out, c, 1))
                    times[c]["candle"].append(column(out, c, 2))

            def theirs():
                out = run([a.python, os.path.join(here, "nngeometry_bench.py"), "--case", c,
                           "--width", width] + reps)
                times[c]["nngeometry"].append(column(out, c, 1))

            # Interleaved, and each side first in every other round.
            for side in ((ours, theirs) if r % 2 == 0 else (theirs, ours)):
                side()
            print(f"round {r + 1}/{a.rounds} {c}: " + ", ".join(
                f"{k} {v[-1]}" for k, v in times[c].items() if v), file=sys.stderr, flush=True)

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    def fmt(x, unit=""):
        return "-" if x is None else f"{x:.3f}{unit}"

    threads = os.environ.get("RAYON_NUM_THREADS", "all cores")
    print(f"\nmedians over {a.rounds} round(s), each the median of {a.repeats}; f32, "
          f"RAYON_NUM_THREADS={threads}, ResNet width {width}\n")
    print("| case | NNGeometry (s) | candle (s) | tch (s) | NNGeometry / candle | NNGeometry / tch |")
    print("|---|---|---|---|---|---|")
    for c in cases:
        n, k, t = (med(times[c][s]) for s in ("nngeometry", "candle", "tch"))
        ratio = lambda x: None if n is None or x is None else n / x
        print(f"| {c} | {fmt(n)} | {fmt(k)} | {fmt(t)} | {fmt(ratio(k), '×')} | {fmt(ratio(t), '×')} |")


if __name__ == "__main__":
    main()
