#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for flux-tui's Slurm tests and for trying the executor.
#
#   scripts/local-slurm.sh start    # munged + slurmctld + slurmd; returns once the node is idle
#   scripts/local-slurm.sh status   # says whether it is up (exit 0) or not (exit 1)
#   scripts/local-slurm.sh stop     # cancels its jobs, stops its daemons, removes its state folder
#
# Needs root (the daemons run as root, without systemd) and Debian's packages: apt-get install slurm-wlm
# munge (Slurm 22.05 on Debian 12). Every file it writes is in $FLUX_TUI_SLURM_DIR (/tmp/flux-tui-slurm),
# except one symlink, /etc/slurm/slurm.conf -> that folder's slurm.conf, so that plain `sbatch`, `squeue`,
# ... find the cluster. It leaves alone (and refuses to start on) a machine whose /etc/slurm/slurm.conf is
# not its own. start and stop are idempotent.
#
# The cluster: the node is this host with its CPUs and memory (slurmd -C) and $FLUX_TUI_SLURM_GPUS (2)
# fake `gpu` gres, so `--gres=gpu:1` (flux-tui's default) is accepted; jobs see CUDA_VISIBLE_DEVICES but
# nothing is bound. Partitions: `debug` (default), `down` (State=DOWN: takes jobs and keeps them PENDING
# with reason PartitionDown), `closed` (State=INACTIVE: sbatch refuses jobs). Finished jobs: `sacct
# --completion` reads the job completion log (no slurmdbd); squeue forgets them MinJobAge (30 s) after.
set -euo pipefail

DIR=${FLUX_TUI_SLURM_DIR:-/tmp/flux-tui-slurm}
CONF=$DIR/etc/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
GPUS=${FLUX_TUI_SLURM_GPUS:-2}
WAIT_S=${FLUX_TUI_SLURM_WAIT:-60}

die() { echo "local-slurm: $*" >&2; exit 1; }
say() { echo "local-slurm: $*"; }

pid_alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

partitions() { sinfo --noheader --format='%P=%a' | tr '\n' ' '; }

node_state() { sinfo --noheader --Node --partition=debug --format=%T 2>/dev/null | head -n1; }

is_up() {
    local daemon
    for daemon in munged slurmctld slurmd; do pid_alive "$DIR/run/$daemon.pid" || return 1; done
    [[ $(readlink "$ETC_CONF" 2>/dev/null) == "$CONF" && $(node_state) =~ ^(idle|mixed|allocated)$ ]]
}

check_host() {
    [[ $(id -u) == 0 ]] || die "must run as root (the daemons run as root, without systemd)"
    local tool missing=()
    for tool in munged mungekey slurmctld slurmd sinfo sbatch; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) || die "${missing[*]} not found: apt-get install -y slurm-wlm munge"
    if [[ -e $ETC_CONF || -L $ETC_CONF ]] && [[ $(readlink "$ETC_CONF" || true) != "$CONF" ]]; then
        die "$ETC_CONF exists and is not this script's: this machine has its own Slurm; leaving it alone"
    fi
}

# One field of `slurmd -C` (this host as slurmd sees it: NodeName=vm CPUs=2 Boards=1 ... RealMemory=24152).
hw() { slurmd -C | head -n1 | tr ' ' '\n' | sed -n "s/^$1=//p"; }

write_conf() {
    local node cpus mem topology="" key i
    node=$(hw NodeName)
    cpus=$(hw CPUs)
    for key in CPUs Boards SocketsPerBoard CoresPerSocket ThreadsPerCore; do
        topology+="$key=$(hw $key) "
    done
    mem=$(($(hw RealMemory) * 95 / 100)) # a little less, so the node is never drained for "low memory"
    cat >"$CONF" <<EOF
# Written by flux-tui's scripts/local-slurm.sh: a throwaway one-node test cluster.
ClusterName=fluxtui
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$DIR/run/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
SchedulerType=sched/builtin
# Start a job as soon as it is submitted and look at pending ones every 2 s (defaults: up to 3 s, 60 s).
SchedulerParameters=batch_sched_delay=0,sched_interval=2
ReturnToService=2
GresTypes=gpu
# No slurmdbd: sacct --completion reads this log of finished jobs (plain sacct says accounting is disabled).
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
# Short, so tests are quick: KILL comes 5 s after TERM; a finished job stays in squeue for 30 s.
KillWait=5
MinJobAge=30
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeAddr=127.0.0.1 ${topology}RealMemory=$mem Gres=gpu:$GPUS
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=down Nodes=$node MaxTime=INFINITE State=DOWN
PartitionName=closed Nodes=$node MaxTime=INFINITE State=INACTIVE
EOF
    # Slurm drops a gpu gres without File=, so each fake GPU is a device node (/dev/null's numbers; a plain
    # file where mknod is not allowed, which slurmd logs as an error but still counts). Nothing opens them.
    for ((i = 0; i < GPUS; i++)); do
        mknod "$DIR/dev/fake-gpu$i" c 1 3 2>/dev/null || : >"$DIR/dev/fake-gpu$i"
    done
    # slurmd reads gres.conf beside the slurm.conf it is given.
    echo "NodeName=$node Name=gpu File=$DIR/dev/fake-gpu[0-$((GPUS - 1))]" >"$DIR/etc/gres.conf"
}

start_munge() {
    mungekey --create --keyfile="$DIR/etc/munge.key" 2>/dev/null ||
        dd if=/dev/urandom of="$DIR/etc/munge.key" bs=1024 count=1 status=none
    chmod 600 "$DIR/etc/munge.key"
    munged --force --socket="$DIR/run/munge.socket" --key-file="$DIR/etc/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/state/munged.seed"
}

cmd_start() {
    check_host
    if is_up; then
        say "already up ($DIR)"
        return 0
    fi
    cmd_stop >/dev/null 2>&1 || true # whatever half of a cluster is left
    local t0 ms state=""
    t0=$(date +%s%N)
    mkdir -p "$DIR"/{etc,run,log,dev,state/ctld,state/d}
    chmod 700 "$DIR"
    write_conf
    ln -sfn "$CONF" "$ETC_CONF"
    start_munge
    slurmctld -i -f "$CONF"
    slurmd -f "$CONF"
    local deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        state=$(node_state || true)
        [[ $state == idle ]] && break
        sleep 0.2
    done
    if [[ $state != idle ]]; then
        tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
        cmd_stop >/dev/null 2>&1 || true
        die "the node was '${state:-unknown}' after ${WAIT_S} s, not idle (logs above); stopped it again"
    fi
    ms=$((($(date +%s%N) - t0) / 1000000))
    say "up in $((ms / 1000)).$((ms % 1000 / 100)) s: $(partitions)($DIR)"
}

stop_daemon() {
    local pidfile=$DIR/run/$1.pid
    pid_alive "$pidfile" || return 0
    kill "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 50); do
        pid_alive "$pidfile" || return 0
        sleep 0.1
    done
    kill -9 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || true
}

cmd_stop() {
    if pid_alive "$DIR/run/slurmctld.pid" && [[ -n $(squeue --noheader 2>/dev/null) ]]; then
        scancel --full --signal=KILL --state=RUNNING 2>/dev/null || true # no checkpoint on the way out
        squeue --noheader --format=%i 2>/dev/null | xargs -r scancel 2>/dev/null || true
        for _ in $(seq 100); do [[ -z $(squeue --noheader 2>/dev/null) ]] && break; sleep 0.1; done
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    [[ $(readlink "$ETC_CONF" 2>/dev/null || true) == "$CONF" ]] && rm -f "$ETC_CONF"
    rm -rf "$DIR"
    say "stopped"
}

cmd_status() {
    if is_up; then
        say "up: $(partitions)($DIR)"
    else
        say "not running"
        return 1
    fi
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
