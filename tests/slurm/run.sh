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
#      `report` keeps the other shards' results, and a resume completes it.
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
    ids=$(python3 -c 'import json,sys; print(",".join(s["job_id"] for s in json.load(open(sys.argv[1]))["submissions"]))' "$run/shards.json")
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
cp "$root"/tests/fixtures/shard/{sweep.ngx,p1.csv,p2.csv,slow.ngx} .

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

if [ "$failures" -gt 0 ]; then
    echo "$failures Slurm check(s) failed; logs of the daemons:" >&2
    tail -n 20 "$STATE_DIR"/log/*.log >&2 || true
    exit 1
fi
