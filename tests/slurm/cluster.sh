#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (munged, slurmctld,
# slurmd from Debian's packages, installed when missing), for the tests in
# tests/slurm/run.sh. Run as root, without systemd; `stop` kills the
# daemons it started, by PID. After `start`, set
# SLURM_CONF=$STATE_DIR/slurm.conf for sbatch/squeue/scancel/scontrol.
# usage: STATE_DIR=<dir> cluster.sh start|stop   knobs: SLURM_CGROUP=v1, SLURM_CPUS=N
set -euo pipefail
: "${STATE_DIR:?set STATE_DIR}"; STATE_DIR=$(mkdir -p "$STATE_DIR" && cd "$STATE_DIR" && pwd)
export SLURM_CONF=$STATE_DIR/slurm.conf
NODE=$(hostname -s); CPUS=${SLURM_CPUS:-$(nproc)}
MEM=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024 ))   # MB offered to jobs
start() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
     || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null
  fi
  mkdir -p "$STATE_DIR"/{state,spool,log}
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  if ! munge -n >/dev/null 2>&1; then            # reuse a munged that already answers
    setpriv --reuid=munge --regid=munge --init-groups munged -F >"$STATE_DIR/log/munged.log" 2>&1 </dev/null &
    echo $! >"$STATE_DIR/munged.pid"
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  munge -n | unmunge >/dev/null
  local pt=proctrack/linuxproc task=task/none
  if [ "${SLURM_CGROUP:-}" = v1 ]; then
    pt=proctrack/cgroup task=task/cgroup,task/affinity
    printf '%s\n' CgroupPlugin=cgroup/v1 CgroupMountpoint=/sys/fs/cgroup ConstrainCores=yes \
      ConstrainRAMSpace=yes ConstrainSwapSpace=no ConstrainDevices=no >"$STATE_DIR/cgroup.conf"
  fi
  cat >"$SLURM_CONF" <<EOF
ClusterName=ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=$pt
TaskPlugin=$task
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
MinJobAge=3600
KillWait=5
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  slurmctld -D -i >"$STATE_DIR/log/slurmctld.out" 2>&1 </dev/null &   # writes slurmctld.pid itself
  slurmd -D >"$STATE_DIR/log/slurmd.out" 2>&1 </dev/null &            # writes slurmd.pid itself
  for _ in $(seq 300); do                        # up to 30 s; takes about 1 s
    [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ] && { sinfo; return 0; }
    sleep 0.1
  done
  echo "slurm node never became idle" >&2; tail -n 20 "$STATE_DIR"/log/*.log >&2; return 1
}
stop() {
  local f pids=()
  for f in slurmd slurmctld munged; do [ -s "$STATE_DIR/$f.pid" ] && pids+=("$(cat "$STATE_DIR/$f.pid")"); done
  if [ ${#pids[@]} -gt 0 ]; then kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${pids[@]}" 2>/dev/null || true; fi
  rm -f "$STATE_DIR"/{slurmd,slurmctld,munged}.pid
  for f in cpuset freezer memory; do             # cgroup v1 mode leaves empty slurm_<node> folders
    [ -d "/sys/fs/cgroup/$f/slurm_$NODE" ] && find "/sys/fs/cgroup/$f/slurm_$NODE" -depth -type d -exec rmdir {} + || true
  done
}
case "${1:-}" in start) start ;; stop) stop ;; *) echo "usage: $0 start|stop" >&2; exit 2 ;; esac
