#!/usr/bin/env bash
# Sharded runs on a real Slurm: starts a single-node cluster on this machine
# (tests/slurm/cluster.sh: installs Slurm and munge from apt when missing),
# then checks, with the debug `nngeo` built by `cargo build`:
#   1. a sweep submitted with `exec --on slurm` and merged by `report`
#      equals the same file run in one process (f64, exact apart from
#      timings);
#   2. `scancel` of one array task mid-run: `nngeo status` says cancelled,
#      `exec --on slurm --resume` submits that task only, and the merged
#      results are complete and equal;
#   3. a task whose data file is missing when it runs fails: `nngeo status`
#      names the shard, its Slurm state and its log (which names the file),
#      `report` keeps the other shards' results, and a resume completes it;
#   4. geometry sharded over data (tests/fixtures/shard/geometry.ngx: a
#      two-stage EKFAC, a dense Fisher, a dense NTK as row blocks, the loss
#      gradient): the parts run as job arrays chained with
#      --dependency=afterok before the shard that reduces them; the merged
#      results equal the same file run in one process bit for bit, and the
#      file without `sharded(k)` to 1e-12 relative (f64);
#   5. one part task fails (its data file is gone when it runs): the shard
#      waiting for it is cancelled, `nngeo status` counts the parts done
#      and names the failed one with its log, and `exec --on slurm
#      --resume` submits that part and the shard only; the merged results
#      equal one process.
# One PASS/FAIL line per check; the daemons are stopped by PID on exit,
# whatever happens. Needs root (apt, munge); prints SKIP without it.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
NNGEO=${NNGEO:-$root/target/debug/nngeo}
if [ "$(id -u)" != 0 ] && ! command -v sbatch >/dev/null; then
    echo "SKIP slurm: needs root to install and start a cluster"
    exit 0
fi
[ -x "$NNGEO" ] || { echo "FAIL: $NNGEO not built (cargo build)" >&2; exit 1; }

work=$(mktemp -d)
export STATE_DIR=$work/slurm
cleanup() {
    bash "$root/tests/slurm/cluster.sh" stop || true
    rm -rf "$work"
}
trap cleanup EXIT
# 4 slots on 2 cores: tasks of an array run side by side.
SLURM_CPUS=4 bash tests/slurm/cluster.sh start >/dev/null
export SLURM_CONF=$STATE_DIR/slurm.conf
export NO_COLOR=1
unset NNGEO_BACKEND NNGEO_DEVICE

failures=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; failures=$((failures + 1)); }

# Waits until Slurm has no job of the run left in its queue.
wait_jobs() {
    local run=$1 ids
    ids=$(python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); print(",".join(s["job_id"] for s in f["submissions"] + f.get("part_submissions", [])))' "$run/shards.json")
    for _ in $(seq 600); do
        [ -z "$(squeue -h -j "$ids" 2>/dev/null)" ] && return 0
        sleep 0.5
    done
    echo "jobs $ids never ended" >&2
    return 1
}

# Result lines without timings, for comparison.
strip() {
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    v = json.loads(line)
    v.pop("time_s", None); v.pop("train_time_s", None)
    print(json.dumps(v, sort_keys=True))' "$1"
}

same_results() {
    cmp -s <(strip "$1/results.jsonl") <(strip "$2/results.jsonl")
}

cd "$work"
cp "$root"/tests/fixtures/shard/{sweep.ngx,p1.csv,p2.csv,slow.ngx,geometry.ngx,partfail.ngx} .

# ---- 1. a sweep on Slurm equals one process
"$NNGEO" exec sweep.ngx --out one >/dev/null 2>&1
out=$("$NNGEO" exec sweep.ngx --on slurm --out runs/sweep 2>&1) || true
if ! grep -q "submitted Slurm job" <<<"$out"; then
    fail sweep "submission: $out"
else
    wait_jobs runs/sweep
    "$NNGEO" report runs/sweep >report.out 2>&1 || true
    status=$("$NNGEO" status runs/sweep 2>&1 || true)
    if ! grep -q "merged 7 of 7 shard(s)" report.out; then
        fail sweep "$(cat report.out)"$'\n'"$status"
    elif ! grep -q "^7 done$" <<<"$status"; then
        fail sweep "status: $status"
    elif ! same_results one runs/sweep; then
        fail sweep "merged results differ from one process"
    else
        pass "sweep: 7 array tasks merged equal one process"
    fi
fi

# ---- 2. scancel one task mid-run, then resume
"$NNGEO" exec slow.ngx --out slow-one >/dev/null 2>&1
out=$("$NNGEO" exec slow.ngx --on slurm --out runs/slow 2>&1) || true
job=$(sed -n 's/^submitted Slurm job \([0-9]*\).*/\1/p' <<<"$out")
if [ -z "$job" ]; then
    fail cancel "submission: $out"
else
    # Cancel task 1 once it has written its first results.
    for _ in $(seq 600); do
        [ -s runs/slow/shards/1/results.jsonl ] && break
        sleep 0.1
    done
    scancel "${job}_1"
    status=""
    for _ in $(seq 100); do
        status=$("$NNGEO" status runs/slow 2>&1 || true)
        grep -Eq "^ +1 +cancelled" <<<"$status" && break
        sleep 0.2
    done
    if ! grep -Eq "^ +1 +cancelled" <<<"$status"; then
        fail cancel "status after scancel: $status"
    else
        wait_jobs runs/slow
        out=$("$NNGEO" exec slow.ngx --on slurm --resume runs/slow 2>&1) || true
        if ! grep -q "1 task(s) (1) of 3 shard(s)" <<<"$out"; then
            fail cancel "resume: $out"
        else
            wait_jobs runs/slow
            "$NNGEO" report runs/slow >report.out 2>&1 || true
            if ! grep -q "merged 3 of 3 shard(s)" report.out; then
                fail cancel "$(cat report.out)"
            elif ! same_results slow-one runs/slow; then
                fail cancel "merged results differ from one process"
            else
                pass "cancel: status said cancelled, the resume ran task 1 only, merged equal one process"
            fi
        fi
    fi
fi

# ---- 3. a task fails (its data file is gone when it runs); resume
# Held at submission, released once the file is moved away.
printf '[slurm]\nextra = ["--hold"]\n' >nngeo.toml
out=$("$NNGEO" exec sweep.ngx --on slurm --out runs/fail 2>&1) || true
rm nngeo.toml
job=$(sed -n 's/^submitted Slurm job \([0-9]*\).*/\1/p' <<<"$out")
if [ -z "$job" ]; then
    fail failure "submission: $out"
else
    mv p2.csv p2.away
    scontrol release "$job"
    wait_jobs runs/fail
    status=$("$NNGEO" status runs/fail 2>&1 || true)
    "$NNGEO" report runs/fail >report.out 2>&1 || true
    kept=$(wc -l <runs/fail/results.jsonl)
    if ! grep -Eq "^ +4 +failed +[0-9]+ +${job}_4" <<<"$status"; then
        fail failure "status does not name shard 4 failed: $status"
    elif ! grep -q "log: .*/slurm/logs/${job}_4.out" <<<"$status" || ! grep -q "p2.csv" <<<"$status"; then
        fail failure "status does not show the log naming p2.csv: $status"
    elif ! grep -q "3 of 7 shard(s) are not complete (4-6)" report.out || [ "$kept" -eq 0 ]; then
        fail failure "report: $(cat report.out) ($kept lines kept)"
    else
        mv p2.away p2.csv
        out=$("$NNGEO" exec sweep.ngx --on slurm --resume runs/fail 2>&1) || true
        wait_jobs runs/fail
        "$NNGEO" report runs/fail >report.out 2>&1 || true
        if ! grep -q "3 task(s) (4-6)" <<<"$out"; then
            fail failure "resume: $out"
        elif ! same_results one runs/fail; then
            fail failure "after the resume: $(cat report.out)"
        else
            pass "failure: shards 4-6 failed naming their log and p2.csv, the others kept, a resume completed the run"
        fi
    fi
fi

# ---- 4. geometry sharded over data: part arrays, then the shard
sed -E 's/ sharded\([0-9]+\)//' geometry.ngx >plain.ngx
"$NNGEO" exec geometry.ngx --out geo-one >/dev/null 2>&1
"$NNGEO" exec plain.ngx --out geo-plain >/dev/null 2>&1
out=$("$NNGEO" exec geometry.ngx --on slurm --out runs/geo 2>&1) || true
# 5 part arrays (EKFAC factors, then its diagonal after them; the dense
# Fisher's sums; the kernel's 10 blocks; the gradient's sums), then the
# shards' array.
parts=$(grep -c "part task(s)" <<<"$out" || true)
if [ "$parts" != 5 ] || ! grep -q "stage \`diagonal\`, 3 part task(s) (0-2) after job" <<<"$out" \
    || ! grep -q "stage \`kernel\`, 10 part task(s)" <<<"$out" || ! grep -q "stage \`sums\`, 3 part task(s)" <<<"$out" \
    || ! grep -q "submitted Slurm job .* of 1 shard(s)" <<<"$out"; then
    fail geometry "submission: $out"
else
    wait_jobs runs/geo
    "$NNGEO" report runs/geo >report.out 2>&1 || true
    nfiles=$(find runs/geo/parts -name '*.safetensors' | wc -l)
    rel=$(python3 -c '
import json, sys
def nums(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool): return [float(v)]
    if isinstance(v, list): return [x for e in v for x in nums(e)]
    if isinstance(v, dict): return [x for e in v.values() for x in nums(e)]
    return []
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) and len(a) > 0, (len(a), len(b))
worst = 0.0
for x, y in zip(a, b):
    assert x["key"] == y["key"], (x["key"], y["key"])
    p, q = nums(x["value"]), nums(y["value"])
    assert len(p) == len(q) and p, x["key"]
    s = max(abs(v) for v in q) or 1.0
    worst = max([worst] + [abs(u - v) / s for u, v in zip(p, q)])
print(worst)' runs/geo/results.jsonl geo-plain/results.jsonl 2>&1 || true)
    if ! grep -q "merged 1 of 1 shard(s)" report.out; then
        fail geometry "$(cat report.out)"$'\n'"$(tail -n 5 runs/geo/slurm/logs/*.out)"
    elif [ "$nfiles" != 21 ]; then
        fail geometry "$nfiles part files, expected 21 (3 + 3 + 2 + 10 + 3)"
    elif ! same_results geo-one runs/geo; then
        fail geometry "merged results differ from the sharded file run in one process"
    elif ! python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= 1e-12 else 1)' "$rel" 2>/dev/null; then
        fail geometry "against the unsharded file: $rel"
    else
        pass "geometry: 21 parts in 5 arrays (EKFAC's 2 chained), reduced by the shard; equal to one process bit for bit, to the unsharded file within $rel relative"
    fi
fi

# ---- 5. one part task fails (its data file is gone when it runs); resume
# Held at submission; the gradient's part 1 is released alone once the
# file is moved away, the rest after the file is back.
"$NNGEO" exec partfail.ngx --out pf-one >/dev/null 2>&1
printf '[slurm]\nextra = ["--hold"]\n' >nngeo.toml
out=$("$NNGEO" exec partfail.ngx --on slurm --out runs/pf 2>&1) || true
rm nngeo.toml
gjob=$(sed -n 's/^submitted Slurm job \([0-9]*\): step #[0-9]* stage `sums`, 3 part task(s).*/\1/p' <<<"$out")
jobs=$(sed -n 's/^submitted Slurm job \([0-9]*\).*/\1/p' <<<"$out")
if [ -z "$gjob" ] || [ "$(wc -l <<<"$jobs")" != 3 ]; then
    fail part-failure "submission: $out"
else
    mv p1.csv p1.away
    scontrol release "${gjob}_1"
    for _ in $(seq 600); do
        scontrol show job -o "${gjob}_1" 2>/dev/null | grep -Eq "JobState=(FAILED|COMPLETED)" && break
        sleep 0.2
    done
    mv p1.away p1.csv
    for j in $jobs; do scontrol release "$j" 2>/dev/null || true; done
    wait_jobs runs/pf
    status=$("$NNGEO" status runs/pf 2>&1 || true)
    if ! grep -q "stage \`sums\`: 2 of 3 done, 1 failed (1); Slurm job(s) $gjob" <<<"$status" \
        || ! grep -Eq "^ +0 +cancelled" <<<"$status" || ! grep -q "log: .*/slurm/logs/${gjob}_1.out" <<<"$status" \
        || ! grep -q "p1.csv" <<<"$status" || ! grep -q "stage \`sums\`: 2 of 2 done" <<<"$status"; then
        fail part-failure "status: $status"
    else
        out=$("$NNGEO" exec partfail.ngx --on slurm --resume runs/pf 2>&1) || true
        wait_jobs runs/pf
        "$NNGEO" report runs/pf >report.out 2>&1 || true
        if [ "$(grep -c "part task(s)" <<<"$out")" != 1 ] || ! grep -q "stage \`sums\`, 1 part task(s) (1)" <<<"$out" \
            || ! grep -q "1 task(s) (0) of 1 shard(s)" <<<"$out"; then
            fail part-failure "resume: $out"
        elif ! grep -q "merged 1 of 1 shard(s)" report.out || ! same_results pf-one runs/pf; then
            fail part-failure "after the resume: $(cat report.out)"
        else
            pass "part failure: status counted 2 of 3 parts done and named part 1's log, the resume ran that part and the shard only, merged equal one process"
        fi
    fi
fi

if [ "$failures" -gt 0 ]; then
    echo "$failures Slurm check(s) failed; logs of the daemons:" >&2
    tail -n 20 "$STATE_DIR"/log/*.log >&2 || true
    exit 1
fi
