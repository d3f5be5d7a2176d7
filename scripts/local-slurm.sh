#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for CI and tests:
# munge, MariaDB, slurmdbd (accounting: sacct must work, or killed jobs are
# never noticed), slurmctld and slurmd on localhost with two fake GPUs
# (dummy device nodes), so `--gpus-per-node=1` jobs really schedule.
#
#   scripts/local-slurm.sh start    install packages if missing, write configs, start what is not running
#   scripts/local-slurm.sh stop     stop every daemon by its pid file, newest first
#   scripts/local-slurm.sh status   daemons and node state; exit 0 iff the node is usable
#
# Needs root (packages, /etc/slurm). Every wait has a wall-clock deadline.
# State, logs and pid files live in $METAPRETRAIN_SLURM_STATE (default below).
set -euo pipefail

STATE=${METAPRETRAIN_SLURM_STATE:-/var/tmp/metapretrain-slurm}
CONF_DIR=/etc/slurm           # the default path: the snakemake job-step plugin strips SLURM_CONF
CLUSTER=metapretrain-ci
NGPUS=2
DB_PASS=metapretrain-ci-only  # a local throwaway database reachable only over the unix socket / loopback
MYSQL_RUN=/run/mysqld
MUNGE_RUN=/run/munge
CONF_CHANGED=0

log() { printf '[local-slurm] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND (each try itself bounded) until it succeeds or time runs out.
wait_for() {
    local seconds=$1 what=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until timeout 5 "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$what not ready after ${seconds}s (logs in $STATE/log)"
        fi
        sleep 0.5
    done
}

alive() {  # alive PIDFILE: the process named in PIDFILE exists
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    local missing=0
    for bin in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct; do
        command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || missing=1
    done
    ((missing)) || return 0
    [[ $(id -u) == 0 ]] || die "SLURM packages are missing and installing them needs root"
    log "installing slurm-wlm munge slurmdbd mariadb-server (apt-get)"
    timeout 300 apt-get update -q >"$STATE/log/apt.log" 2>&1 || die "apt-get update failed (see $STATE/log/apt.log)"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server \
        >>"$STATE/log/apt.log" 2>&1 || die "apt-get install failed (see $STATE/log/apt.log)"
}

node_topology() {
    # slurmd -C prints what slurmd will report; slurm.conf must match it or the node drains.
    slurmd -C | head -1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' '
}

write_configs() {
    mkdir -p "$CONF_DIR" "$STATE"/{ctld,d,dev,log,run}
    for i in $(seq 0 $((NGPUS - 1))); do
        # A copy of /dev/null named like a GPU: gres/gpu needs device files, count-only GRES leaves the node INVAL.
        [[ -c $STATE/dev/nvidia$i ]] || mknod "$STATE/dev/nvidia$i" c 1 3
    done
    local tmp
    tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    cat >"$tmp" <<EOF
# Written by scripts/local-slurm.sh: a one-node test cluster with fake GPUs.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
# A requeued job waits for its begin time (cred_expire + 1 s) and then a scheduling pass: run passes every 2 s.
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 $(node_topology) Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 644 "$tmp"
    cmp -s "$tmp" "$CONF_DIR/slurm.conf" || CONF_CHANGED=1
    mv "$tmp" "$CONF_DIR/slurm.conf"
    printf 'AutoDetect=off\nNodeName=localhost Name=gpu File=%s/dev/nvidia[0-%d]\n' "$STATE" $((NGPUS - 1)) >"$CONF_DIR/gres.conf"
    tmp=$(mktemp "$CONF_DIR/.slurmdbd.conf.XXXXXX")
    cat >"$tmp" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$tmp" && mv "$tmp" "$CONF_DIR/slurmdbd.conf"  # slurmdbd refuses a readable one
}

start_munge() {
    local pidfile=$MUNGE_RUN/munged.pid
    alive "$pidfile" && return 0
    mkdir -p "$MUNGE_RUN" && chown munge:munge "$MUNGE_RUN"
    [[ -s /etc/munge/munge.key ]] || { runuser -u munge -- mungekey --create >/dev/null 2>&1 || die "cannot create the munge key"; }
    runuser -u munge -- munged --force
    wait_for 20 munged bash -c 'munge -n | unmunge'
}

start_mariadb() {
    local pidfile=$MYSQL_RUN/mariadb.pid
    if ! alive "$pidfile"; then
        mkdir -p "$MYSQL_RUN" && chown mysql:mysql "$MYSQL_RUN"   # mariadbd runs as mysql and writes its socket here
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/log/mariadb-install.log" 2>&1
        setsid runuser -u mysql -- mariadbd --datadir=/var/lib/mysql --socket=$MYSQL_RUN/mysqld.sock \
            --pid-file=$pidfile --bind-address=127.0.0.1 --log-error="$STATE/log/mariadb.log" </dev/null >/dev/null 2>&1 &
        wait_for 60 MariaDB mariadb-admin --socket=$MYSQL_RUN/mysqld.sock ping
    fi
    timeout 30 mariadb --socket=$MYSQL_RUN/mysqld.sock -e "
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
        FLUSH PRIVILEGES;" || die "cannot create the slurm database user"
}

start_slurmdbd() {
    if ! alive "$STATE/run/slurmdbd.pid"; then
        slurmdbd
        wait_for 30 slurmdbd bash -c '</dev/tcp/127.0.0.1/6819'
    fi
    # Registering the cluster is idempotent ("already exists" is fine).
    timeout 20 sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    wait_for 20 "the accounting cluster record" bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx '$CLUSTER'"
}

start_slurmctld() {
    alive "$STATE/run/slurmctld.pid" && return 0
    slurmctld
    wait_for 30 slurmctld bash -c 'scontrol ping | grep -q UP'
}

start_slurmd() {
    if ! alive "$STATE/run/slurmd.pid"; then
        slurmd -N localhost
    fi
    local deadline=$((SECONDS + 60)) state=""
    while ((SECONDS < deadline)); do
        state=$(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null || true)
        case $state in
            idle*|mixed*|allocated*) return 0 ;;
            drain*|down*) timeout 5 scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node localhost not usable after 60s (state '$state'; see $STATE/log/slurmd.log)"
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "run as root (writes /etc/slurm, starts system daemons)"
    mkdir -p "$STATE/log"
    install_packages
    local ctld_was_up=0
    alive "$STATE/run/slurmctld.pid" && ctld_was_up=1
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    if ((CONF_CHANGED)) && ((ctld_was_up)); then
        log "slurm.conf changed: reconfiguring the running daemons"
        timeout 30 scontrol reconfigure || die "scontrol reconfigure failed (see $STATE/log/slurmctld.log)"
    fi
    log "cluster $CLUSTER up: $(timeout 5 sinfo -h -o '%P %D %T %G' | tr '\n' ' ')"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: TERM, wait up to 20 s, then KILL
    local name=$1 pidfile=$2 pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 20s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "stopped $name (pid $pid)"
}

cmd_stop() {
    stop_pidfile slurmd "$STATE/run/slurmd.pid"
    stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
    stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
    stop_pidfile mariadb "$MYSQL_RUN/mariadb.pid"
    stop_pidfile munged "$MUNGE_RUN/munged.pid"
}

cmd_status() {
    local ok=0
    for entry in "munged:$MUNGE_RUN/munged.pid" "mariadb:$MYSQL_RUN/mariadb.pid" "slurmdbd:$STATE/run/slurmdbd.pid" \
                 "slurmctld:$STATE/run/slurmctld.pid" "slurmd:$STATE/run/slurmd.pid"; do
        local name=${entry%%:*} pidfile=${entry#*:}
        if alive "$pidfile"; then
            printf '%-10s running (pid %s)\n' "$name" "$(cat "$pidfile")"
        else
            printf '%-10s stopped\n' "$name"; ok=1
        fi
    done
    if ((ok == 0)); then
        local state
        state=$(timeout 5 sinfo -h -n localhost -o '%T %G' 2>/dev/null || true)
        printf '%-10s %s\n' node "${state:-unreachable}"
        [[ $state == idle* || $state == mixed* || $state == allocated* ]] || ok=1
    fi
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
