#!/usr/bin/env bash
# Reliability replay (issue 12, "Runs you can trust"): the real `nngeo`
# binary on tiny experiments, each outcome asserted. One line per scenario:
# PASS, FAIL (with the reason) or SKIP (with why); exit 1 on any FAIL.
#
#   1. kill -9 mid-way, then `--resume DIR`: results equal a clean run's
#   2. two concurrent execs into one folder: one exits 2 naming the lock
#      holder, the other finishes ok, no garbled line
#   3. a failing backend/device on a finished folder: exit non-zero, the
#      folder unchanged (checksums)
#   4. a full tmpfs (where `unshare -rm` may mount one): exit non-zero,
#      the path and the OS reason named, only whole JSON lines left
#   5. each bad data file: `nngeo check` exits 2 naming file and line/row
#   6. memory: the plan's estimated peak against the measured peak RSS
#
# Uses $NNGEO if set, else builds the debug binary (`cargo build`) and uses
# ${CARGO_TARGET_DIR:-target}/debug/nngeo. Everything it writes lives in
# one `mktemp -d` folder, removed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -z "${NNGEO:-}" ]; then
    cargo build --quiet --bin nngeo || { echo "FAIL build: cargo build failed"; exit 1; }
    NNGEO="${CARGO_TARGET_DIR:-target}/debug/nngeo"
fi
NNGEO="$(realpath "$NNGEO")"
[ -x "$NNGEO" ] || { echo "FAIL setup: no nngeo binary at $NNGEO"; exit 1; }
export NO_COLOR=1
unset NNGEO_BACKEND NNGEO_DEVICE

TMP="$(mktemp -d)"
BG_PIDS=()
cleanup() {
    for p in ${BG_PIDS[@]+"${BG_PIDS[@]}"}; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT

FAILS=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; FAILS=$((FAILS + 1)); }
skip() { echo "SKIP $1: $2"; }

lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# The results of a run folder without their clocks, sorted: values compare
# as text, which is exact for f64 (shortest round-trip form).
values() {
    sed -E 's/"(train_)?time_s":[^,}]*,?//g' "$1/results.jsonl" | sort
}

# Every line of FILE is one complete JSON value, and the file ends with a
# newline (or is empty).
whole_json_lines() {
    local f="$1"
    [ -f "$f" ] || return 1
    if [ -s "$f" ] && [ "$(tail -c 1 "$f" | od -An -c | tr -d ' ')" != '\n' ]; then
        return 1
    fi
    if command -v python3 >/dev/null 2>&1; then
        python3 -c '
import json, sys
for i, line in enumerate(open(sys.argv[1], encoding="utf-8"), 1):
    json.loads(line)
' "$f" 2>/dev/null
    elif command -v jq >/dev/null 2>&1; then
        jq -R 'fromjson' "$f" >/dev/null 2>&1
    else
        ! grep -qvE '^\{.*\}$' "$f"
    fi
}

# Every file but the lock, whose text says who last took the folder.
checksums() { (cd "$1" && find . -type f ! -name .nngeo.lock | sort | xargs -r sha256sum); }

# Three training runs (a sweep over lr) measuring KFAC's trace at every
# step, a dense Fisher after each: a few thousand result lines, seconds.
experiment() {
    local steps="$1"
    cat <<EOF
experiment rel { seed = 0 dtype = f64 }
data d = digits(split = train) |> take(40)
model net = mlp(data = d, hidden = [6])
measure trace(Fim(Diag) of net on d) as "trF/init"
for lr in [0.1, 0.05, 0.02] {
  train net on d as trained {
    optimizer = sgd(lr = lr)
    steps = $steps
    batch = 10
    every 1 steps { measure trace(Fim(KFAC) of net on d) as "trF" }
  }
  measure trace(Fim(Dense) of trained on d) as "trF/dense"
}
plot "trF" against step by lr
EOF
}

LONG="$TMP/long.ngx"
experiment 1500 >"$LONG"
CLEAN="$TMP/clean"
if ! "$NNGEO" exec "$LONG" --out "$CLEAN" >"$TMP/clean.log" 2>&1; then
    echo "FAIL setup: a clean run failed: $(tail -3 "$TMP/clean.log")"
    exit 1
fi
TOTAL=$(lines "$CLEAN/results.jsonl")

# Starts `nngeo exec LONG --out DIR` in the background; sets RUN_PID.
start_run() {
    "$NNGEO" exec "$LONG" --out "$1" >"$2" 2>&1 &
    RUN_PID=$!
    BG_PIDS+=("$RUN_PID")
}

# Waits until FILE has N lines while RUN_PID lives (60 s at most).
wait_lines() {
    local file="$1" n="$2" i=0
    while [ "$(lines "$file")" -lt "$n" ]; do
        kill -0 "$RUN_PID" 2>/dev/null || return 1
        i=$((i + 1))
        [ "$i" -gt 6000 ] && return 1
        sleep 0.01
    done
}

# 1. kill -9, then resume ----------------------------------------------------
scenario_kill_resume() {
    local name="kill -9 then --resume equals a clean run" out="$TMP/killed"
    start_run "$out" "$TMP/killed.log"
    if ! wait_lines "$out/results.jsonl" $((TOTAL / 2)); then
        fail "$name" "the run ended before writing half of its $TOTAL lines"
        return
    fi
    kill -9 "$RUN_PID" 2>/dev/null
    wait "$RUN_PID" 2>/dev/null
    local got
    got=$(lines "$out/results.jsonl")
    if [ "$got" -ge "$TOTAL" ]; then
        fail "$name" "the run finished before it was killed"
        return
    fi
    if ! grep -q '"status": *"running"' "$out/manifest.json"; then
        fail "$name" "the killed run's manifest does not say running"
        return
    fi
    if ! "$NNGEO" exec "$LONG" --resume "$out" >"$TMP/resume.log" 2>&1; then
        fail "$name" "resume failed: $(tail -3 "$TMP/resume.log")"
        return
    fi
    if ! grep -q '"status": *"ok"' "$out/manifest.json"; then
        fail "$name" "the resumed manifest does not say ok"
        return
    fi
    if ! whole_json_lines "$out/results.jsonl"; then
        fail "$name" "results.jsonl holds a line that is not JSON"
        return
    fi
    if ! cmp -s <(values "$CLEAN") <(values "$out"); then
        fail "$name" "the resumed results differ from the clean run's ($(lines "$out/results.jsonl") vs $TOTAL lines)"
        return
    fi
    pass "$name (killed at $got of $TOTAL lines)"
}

# 2. two concurrent runs into one folder ------------------------------------
scenario_concurrent() {
    local name="two concurrent execs into one folder" out="$TMP/shared"
    start_run "$out" "$TMP/first.log"
    local first=$RUN_PID
    if ! wait_lines "$out/results.jsonl" 50; then
        fail "$name" "the first run ended before writing 50 lines"
        return
    fi
    "$NNGEO" exec "$LONG" --out "$out" --overwrite >"$TMP/second.log" 2>&1
    local rc2=$?
    wait "$first"
    local rc1=$?
    if [ "$rc2" -ne 2 ]; then
        fail "$name" "the second run exited $rc2, not 2: $(tail -2 "$TMP/second.log")"
        return
    fi
    if ! grep -q "in use by another nngeo run" "$TMP/second.log" ||
        ! grep -q "pid $first" "$TMP/second.log"; then
        fail "$name" "the second run does not name the holder (pid $first): $(cat "$TMP/second.log")"
        return
    fi
    if [ "$rc1" -ne 0 ] || ! grep -q '"status": *"ok"' "$out/manifest.json"; then
        fail "$name" "the first run exited $rc1: $(tail -2 "$TMP/first.log")"
        return
    fi
    if ! whole_json_lines "$out/results.jsonl" ||
        ! cmp -s <(values "$CLEAN") <(values "$out"); then
        fail "$name" "the first run's results are garbled or differ from a clean run's"
        return
    fi
    pass "$name (second exited 2 naming pid $first; first ok, results intact)"
}

# 3. a failing backend or device on a finished folder -----------------------
scenario_failing_backend() {
    local name="a failing backend/device leaves a finished folder unchanged"
    local before after args rc
    before=$(checksums "$CLEAN")
    for args in "--device cuda:99" "--backend no_such_backend"; do
        # shellcheck disable=SC2086
        "$NNGEO" exec "$LONG" --out "$CLEAN" --overwrite $args >"$TMP/fail.log" 2>&1
        rc=$?
        after=$(checksums "$CLEAN")
        if [ "$rc" -eq 0 ]; then
            fail "$name" "exec $args exited 0"
            return
        fi
        if [ "$before" != "$after" ]; then
            fail "$name" "exec $args (exit $rc) changed the folder"
            return
        fi
    done
    pass "$name (--device cuda:99, --backend no_such_backend: non-zero, checksums equal)"
}

# 4. a full disk ------------------------------------------------------------
scenario_full_disk() {
    local name="a full tmpfs stops the run, keeping whole lines"
    local mnt="$TMP/mnt" copy="$TMP/fullcopy" probe
    mkdir -p "$mnt"
    if ! probe=$(unshare -rm sh -c 'mount -t tmpfs -o size=64k tmpfs "$0"' "$mnt" 2>&1); then
        skip "$name" "cannot mount a tmpfs here (unshare -rm: ${probe:-not available})"
        return
    fi
    local small="$TMP/small.ngx"
    experiment 200 >"$small"
    # The tmpfs vanishes with the namespace: copy the folder out first.
    unshare -rm sh -c 'mount -t tmpfs -o size=64k tmpfs "$1" || exit 99
        "$0" exec "$2" --out "$1/out" 2>"$4"; rc=$?; cp -r "$1/out" "$3"; exit $rc' \
        "$NNGEO" "$mnt" "$small" "$copy" "$TMP/full.err" >/dev/null
    local rc=$?
    if [ "$rc" -eq 99 ]; then
        skip "$name" "the tmpfs could not be mounted in the namespace"
        return
    fi
    if [ "$rc" -eq 0 ]; then
        fail "$name" "exec exited 0 on a full disk"
        return
    fi
    if ! grep -q "out/" "$TMP/full.err" || ! grep -q "No space left on device" "$TMP/full.err"; then
        fail "$name" "the message lacks the path or the OS reason: $(cat "$TMP/full.err")"
        return
    fi
    if [ ! -s "$copy/results.jsonl" ] || ! whole_json_lines "$copy/results.jsonl"; then
        fail "$name" "results.jsonl is empty or holds a partial line"
        return
    fi
    if grep -q '"status": *"ok"' "$copy/manifest.json" 2>/dev/null; then
        fail "$name" "the manifest says ok"
        return
    fi
    pass "$name (exit $rc, $(lines "$copy/results.jsonl") whole lines kept)"
}

# 5. bad data ---------------------------------------------------------------
HEAD='experiment bad {
  seed = 0
}'

# bad_case NAME DIR NEEDLE...: `nngeo check DIR/exp.ngx` exits 2, and
# stderr holds every needle.
bad_case() {
    local name="$1" dir="$2"
    shift 2
    "$NNGEO" check "$dir/exp.ngx" >/dev/null 2>"$dir/err"
    local rc=$? n
    if [ "$rc" -ne 2 ]; then
        fail "bad data: $name" "check exited $rc, not 2: $(head -3 "$dir/err")"
        return
    fi
    for n in "$@"; do
        if ! grep -qF -- "$n" "$dir/err"; then
            fail "bad data: $name" "\`$n\` missing from: $(head -5 "$dir/err")"
            return
        fi
    done
    pass "bad data: $name (exit 2; names $(printf '"%s" ' "$@"))"
}

csv_exp() {
    printf '%s\ndata d = csv("t.csv", target = "label")\nmodel m = mlp(in = 2, hidden = [4], out = 2)\nmeasure trace(Fim(Diag) of m on d)\n' "$HEAD"
}

idx_exp() {
    printf '%s\ndata d = idx(images = "img.idx.gz", labels = "lab.idx") |> normalize\nmodel m = sequential(flatten, linear(4, 10), input = [1, 2, 2])\nmeasure trace(Fim(Diag) of m on d)\n' "$HEAD"
}

# Big-endian u32.
be32() { printf "\\$(printf %03o $(($1 >> 24 & 255)))\\$(printf %03o $(($1 >> 16 & 255)))\\$(printf %03o $(($1 >> 8 & 255)))\\$(printf %03o $(($1 & 255)))"; }

# idx_labels N POS VALUE: an IDX label file of N labels i % 10, with VALUE at POS.
idx_labels() {
    local i v
    be32 $((0x801))
    be32 "$1"
    for ((i = 0; i < $1; i++)); do
        v=$((i % 10))
        [ "$i" -eq "$2" ] && v=$3
        printf "\\$(printf %03o "$v")"
    done
}

# idx_images N: an IDX image file of N random 2×2 images.
idx_images() {
    be32 $((0x803))
    be32 "$1"
    be32 2
    be32 2
    head -c $((4 * $1)) /dev/urandom
}

scenario_bad_data() {
    local d
    d="$TMP/bad_one_class"; mkdir -p "$d"
    printf 'a,b,label\n1,2,0\n3,4,0\n5,6,0\n' >"$d/t.csv"
    csv_exp >"$d/exp.ngx"
    bad_case "one-class CSV" "$d" "t.csv" "only one class" "exp.ngx:4"

    d="$TMP/bad_huge_label"; mkdir -p "$d"
    printf 'a,b,label\n1,2,0\n3,4,1\n5,6,1000000\n7,8,0\n' >"$d/t.csv"
    csv_exp >"$d/exp.ngx"
    bad_case "a label of 1000000 in a CSV" "$d" "t.csv" "1000000" "row 2"

    d="$TMP/bad_idx_255"; mkdir -p "$d"
    idx_images 40 | gzip -c >"$d/img.idx.gz"
    idx_labels 40 17 255 >"$d/lab.idx"
    idx_exp >"$d/exp.ngx"
    bad_case "IDX label 255 in a 10-class file" "$d" "lab.idx" "255 at row 17" "exp.ngx:4"

    d="$TMP/bad_nan"; mkdir -p "$d"
    printf 'a,b,label\n1,2,0\n3,NaN,1\n5,6,1\n' >"$d/t.csv"
    csv_exp >"$d/exp.ngx"
    bad_case "NaN in a CSV" "$d" "t.csv" '`NaN` in column `b` on line 3'

    d="$TMP/bad_truncated_gz"; mkdir -p "$d"
    idx_images 200 | gzip -c >"$d/whole.gz"
    head -c $(($(wc -c <"$d/whole.gz") / 2)) "$d/whole.gz" >"$d/img.idx.gz"
    idx_labels 200 -1 0 >"$d/lab.idx"
    idx_exp >"$d/exp.ngx"
    bad_case "truncated .gz IDX file" "$d" "img.idx.gz" "exp.ngx:4"

    d="$TMP/bad_utf8"; mkdir -p "$d"
    printf 'experiment bad {\n  seed = 0\n}\n// caf\351\n' >"$d/exp.ngx"
    bad_case "invalid UTF-8 in a .ngx file" "$d" "exp.ngx:4:7" "byte offset 36"
}

# 6. memory estimate against the measured peak ------------------------------
# Bytes of "X.Y UNIT" as `nngeo plan` prints it, plus DELTA (in units of
# the last printed digit, -1..1) to bound the rounding.
to_bytes() {
    awk -v s="$1" -v d="$2" 'BEGIN {
        split(s, a, " "); m = 1
        if (a[2] == "KiB") m = 1024; else if (a[2] == "MiB") m = 1048576
        else if (a[2] == "GiB") m = 1073741824; else if (a[2] == "TiB") m = 1099511627776
        e = (m == 1) ? 0 : 0.05 * d
        printf "%.0f\n", (a[1] + e) * m }'
}

# Peak resident set of a command, in bytes (`/usr/bin/time -v`, else
# polling /proc/PID/status for VmHWM); sets PEAK and RC.
measure_peak() {
    if [ -x /usr/bin/time ] && /usr/bin/time -v true >/dev/null 2>&1; then
        /usr/bin/time -v -o "$TMP/time.txt" "$@" >/dev/null 2>&1
        RC=$?
        PEAK=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 * 1024 }' "$TMP/time.txt")
    else
        "$@" >/dev/null 2>&1 &
        local pid=$! hwm=0 v
        while kill -0 "$pid" 2>/dev/null; do
            v=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
            [ -n "$v" ] && [ "$v" -gt "$hwm" ] && hwm=$v
            sleep 0.005
        done
        wait "$pid"
        RC=$?
        PEAK=$((hwm * 1024))
    fi
}

memory_case() {
    local name="$1" src="$2" small=$((32 << 20))
    local file="$TMP/mem_$name.ngx"
    printf '%s\n' "$src" >"$file"
    local est
    est=$("$NNGEO" plan "$file" 2>/dev/null | sed -nE 's/.*peak memory of the run ≈ ([0-9.]+ [KMGT]?i?B);.*/\1/p')
    if [ -z "$est" ]; then
        fail "memory: $name" "no estimate in \`nngeo plan\`'s output"
        return
    fi
    measure_peak "$NNGEO" exec "$file" --out "$TMP/mem_$name.out"
    if [ "$RC" -ne 0 ] || [ -z "$PEAK" ] || [ "$PEAK" -le 0 ]; then
        fail "memory: $name" "exec exited $RC (peak ${PEAK:-unknown})"
        return
    fi
    local lo hi
    lo=$(to_bytes "$est" -1)
    hi=$(to_bytes "$est" 1)
    local mib=$((PEAK >> 20))
    if [ "$hi" -lt "$PEAK" ]; then
        fail "memory: $name" "estimate $est below the measured peak ${mib} MiB"
    elif [ "$lo" -gt $((PEAK * 3 / 2 + small)) ]; then
        fail "memory: $name" "estimate $est above 1.5 × peak (${mib} MiB) + 32 MiB"
    else
        pass "memory: $name (estimate $est, measured ${mib} MiB)"
    fi
}

scenario_memory() {
    if ! { [ -x /usr/bin/time ] && /usr/bin/time -v true >/dev/null 2>&1; } &&
        [ ! -r /proc/self/status ]; then
        skip "memory estimate vs peak" "neither /usr/bin/time -v nor /proc to measure a peak"
        return
    fi
    local head='experiment mem {
  seed = 0
  device = cpu
  dtype = f64
}
data train = digits(split = train) |> normalize
data probe = train |> take(50, random, seed = 1)
model net = mlp(in = 64, hidden = [48], out = 10, act = tanh, init = xavier(seed = 0))'
    memory_case "dense Fisher" "$head
measure trace(Fim(Dense) of net on probe) as \"t\""
    memory_case "KFAC" "$head
measure trace(Fim(KFAC) of net on probe) as \"t\""
    memory_case "EKFAC natural gradient with BlockDiag hooks" "$head
for opt in [sgd(lr = 0.1) as \"sgd\", ngd(fim = EKFAC, lr = 0.05, damping = 1e-2, refresh = 5, refit = 5) as \"ekfac\"] {
  train net on train {
    optimizer = opt
    steps = 20
    batch = 128
    every 10 steps {
      let B = Fim(BlockDiag) of net on probe
      measure rel_error(Fim(KFAC) of net on probe, B) as \"rel_error/KFAC\"
    }
  }
}"
}

scenario_kill_resume
scenario_concurrent
scenario_failing_backend
scenario_full_disk
scenario_bad_data
scenario_memory

if [ "$FAILS" -gt 0 ]; then
    echo "reliability: $FAILS scenario(s) failed"
    exit 1
fi
echo "reliability: all scenarios passed or were skipped"
