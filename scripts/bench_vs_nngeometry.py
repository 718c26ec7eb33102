#!/usr/bin/env python3
"""Runs `nngeo bench` (candle), `nngeo-tch-bench` (libtorch) and
scripts/nngeometry_bench.py case by case, interleaved over rounds, and
prints one table of medians with NNGeometry's time over each backend's.
Called by scripts/bench-vs-nngeometry.sh, which builds what it runs."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MLP = ["kfac", "ekfac", "ekfac-refit", "diag", "blockdiag", "dense", "ntk-100", "ntk-1000", "ntk-2000"]
EXEC = ["exec-kfac", "exec-ekfac-refit", "exec-diag", "exec-kfac-5000", "exec-ntk-1000", "exec-ntk-2000"]


TIMEOUT = None


def run(cmd, env=None):
    """The command's standard output, also when it failed or timed out part
    of the way (the cases it finished are still in it)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        sys.stderr.write(f"warning: {' '.join(cmd)} timed out after {TIMEOUT} s\n")
        out = e.stdout or ""
        return out.decode() if isinstance(out, bytes) else out
    if p.returncode != 0:
        sys.stderr.write(f"warning: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-400:]}\n")
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
    ap.add_argument("--device", default="cpu",
                    help="cpu, or cuda: tch and NNGeometry on the GPU, `exec-*` cases also on --candle")
    ap.add_argument("--candle", default="candle",
                    help="the candle backend of `exec-*` cases (candle-cuda on a GPU)")
    ap.add_argument("--timeout", type=float, help="seconds per command of a side")
    ap.add_argument("--json", help="write the raw times here after every round")
    ap.add_argument("--pool", action="append", default=[],
                    help="add the rounds of an earlier --json file of the same machine")
    a = ap.parse_args()
    global TIMEOUT
    TIMEOUT = a.timeout
    gpu = a.device != "cpu"
    cases = a.case or MLP + EXEC
    width = os.environ.get("NNGEO_BENCH_WIDTH", "64")
    here = os.path.dirname(os.path.abspath(__file__))
    reps = ["--repeats", str(a.repeats)]
    times = {c: {"nngeometry": [], "candle": [], "tch": [], "nngeometry-process": []} for c in cases}
    execs = [c for c in cases if c.startswith("exec-") or a.no_tch]
    inproc = [c for c in cases if c not in execs]

    def each(cs):
        return [x for c in cs for x in ("--case", c)]

    def ours():
        # In-process cases in one `nngeo-tch-bench` (its candle column is
        # candle on the CPU, left out on a GPU); `exec-*` cases through
        # `nngeo bench`, which runs `nngeo exec` on the backend of
        # NNGEO_BACKEND / NNGEO_DEVICE.
        if inproc:
            cmd = [a.tch_bench, "--device", a.device] + (["--no-candle"] if gpu else [])
            out = run(cmd + each(inproc) + reps)
            for c in inproc:
                times[c]["tch"].append(column(out, c, 1))
                times[c]["candle"].append(None if gpu else column(out, c, 2))
        if execs:
            env = dict(os.environ, NNGEO_BACKEND=a.candle, NNGEO_DEVICE=a.device)
            out = run([a.nngeo, "bench"] + each(execs) + reps, env)
            for c in execs:
                times[c]["candle"].append(column(out, c, 1))
            if not a.no_tch:
                env = dict(os.environ, NNGEO_BACKEND="tch", NNGEO_DEVICE=a.device)
                out = run([a.nngeo, "bench"] + each(execs) + reps, env)
                for c in execs:
                    times[c]["tch"].append(column(out, c, 1))

    def theirs():
        out = run([a.python, os.path.join(here, "nngeometry_bench.py"), "--width", width,
                   "--device", a.device] + each(cases) + reps)
        for c in cases:
            times[c]["nngeometry"].append(column(out, c, 1))
        # The user's path on NNGeometry's side of an `exec-*` case: a fresh
        # Python process that imports torch and nngeometry, makes the data
        # and the model and builds once (what `nngeo exec` is on ours).
        for c in execs:
            xs = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                p = subprocess.run([a.python, os.path.join(here, "nngeometry_bench.py"), "--once",
                                    "--width", width, "--device", a.device, "--case", c],
                                   capture_output=True, text=True, timeout=TIMEOUT)
                if p.returncode == 0:
                    xs.append(time.perf_counter() - t)
            times[c]["nngeometry-process"].append(statistics.median(xs) if xs else None)

    # Each round runs every case on each side, the sides alternating first.
    for r in range(a.rounds):
        for side in ((ours, theirs) if r % 2 == 0 else (theirs, ours)):
            side()
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"device": a.device, "candle": a.candle, "times": times}, f)
        print(f"round {r + 1}/{a.rounds}: " + "; ".join(
            f"{c} " + ", ".join(f"{k} {v[-1]}" for k, v in times[c].items() if v) for c in cases),
            file=sys.stderr, flush=True)

    for path in a.pool:
        with open(path) as f:
            earlier = json.load(f)["times"]
        for c in cases:
            for side, xs in earlier.get(c, {}).items():
                times[c].setdefault(side, []).extend(xs)

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    def fmt(x, unit=""):
        return "-" if x is None else f"{x:.3f}{unit}"

    threads = os.environ.get("RAYON_NUM_THREADS", "all cores")
    print(f"\nmedians over {a.rounds} round(s) here and {len(a.pool)} pooled file(s), each the median of {a.repeats}; f32, device {a.device}, "
          f"RAYON_NUM_THREADS={threads}, ResNet width {width}\n")
    print(f"| case | NNGeometry (s) | {a.candle} (s) | tch (s) | NNGeometry / {a.candle} | NNGeometry / tch "
          f"| NNGeometry process (s) | process / {a.candle} | process / tch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        n, k, t, p = (med(times[c][s]) for s in ("nngeometry", "candle", "tch", "nngeometry-process"))
        ratio = lambda num, x: None if num is None or x is None else num / x
        print(f"| {c} | {fmt(n)} | {fmt(k)} | {fmt(t)} | {fmt(ratio(n, k), '×')} | {fmt(ratio(n, t), '×')} "
              f"| {fmt(p)} | {fmt(ratio(p, k), '×')} | {fmt(ratio(p, t), '×')} |")


if __name__ == "__main__":
    main()
