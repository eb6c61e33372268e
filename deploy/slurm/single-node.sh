#!/usr/bin/env bash
# A one-machine SLURM cluster for trying blockseg's SLURM mode: this host is
# both the controller (slurmctld) and the only compute node (slurmd), in one
# partition "debug". Everything listens on 127.0.0.1 only.
#
#   sudo deploy/slurm/single-node.sh          # install, configure, start; wait until the node is idle
#   sudo deploy/slurm/single-node.sh start    # the same
#   sudo deploy/slurm/single-node.sh status   # daemons and sinfo
#   sudo deploy/slurm/single-node.sh stop     # stop slurmd, slurmctld and munged
#
# Meant for Debian 12 (slurm-wlm 22.05, munge 0.5.15) without systemd: the
# daemons are started directly. Safe to run again: what is installed is not
# reinstalled, a running daemon is left alone unless slurm.conf changed (then
# both slurm daemons restart; job state survives in StateSaveLocation).
#
# Environment:
#   SLURM_WAIT_S=60           how long to wait for the node to become idle
#   SLURM_MEM_RESERVE_MB=1024 memory kept back from RealMemory for the OS
#   SLURM_DEF_MEM_PER_CPU=    MB given to a job that asks for no memory
#                             (default: RealMemory / CPUs, at most 1024)
set -euo pipefail

ACTION="${1:-start}"
WAIT_S="${SLURM_WAIT_S:-60}"
MEM_RESERVE_MB="${SLURM_MEM_RESERVE_MB:-1024}"

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGE_PID="$MUNGE_RUN/munged.pid"
SLURM_USER=slurm

NODE="$(hostname -s)"

say() { printf 'single-node: %s\n' "$*"; }
die() { printf 'single-node: error: %s\n' "$*" >&2; exit 1; }

# true when process $1 exists and is not a zombie (a killed daemon can
# linger as one until init reaps it, and kill -0 still succeeds on it)
proc_running() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}

# true when the pid in file $1 is running and is the program named $2
pid_alive() {
    local file="$1" name="$2" pid
    [[ -r "$file" ]] || return 1
    pid="$(tr -dc '0-9' <"$file")"
    [[ -n "$pid" ]] || return 1
    proc_running "$pid" || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

# send SIGTERM to the daemon in pid file $1 (program $2), wait up to 20 s
stop_pidfile() {
    local file="$1" name="$2" pid i
    if ! pid_alive "$file" "$name"; then
        say "$name: not running"
        rm -f "$file"
        return 0
    fi
    pid="$(tr -dc '0-9' <"$file")"
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do
        proc_running "$pid" || break
        sleep 0.2
    done
    if proc_running "$pid"; then
        say "$name (pid $pid) ignored SIGTERM for 20 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
    say "$name: stopped (pid $pid)"
}

show_logs() {
    local f
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        if [[ -r "$f" ]]; then
            printf '\n----- last 40 lines of %s -----\n' "$f" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

stop_all() {
    stop_pidfile "$SLURMD_PID" slurmd
    stop_pidfile "$CTLD_PID" slurmctld
    stop_pidfile "$MUNGE_PID" munged
}

status_all() {
    local name file
    for name in munged slurmctld slurmd; do
        case "$name" in
            munged) file="$MUNGE_PID" ;;
            slurmctld) file="$CTLD_PID" ;;
            slurmd) file="$SLURMD_PID" ;;
        esac
        if pid_alive "$file" "$name"; then
            say "$name: running (pid $(tr -dc '0-9' <"$file"))"
        else
            say "$name: not running"
        fi
    done
    if command -v sinfo >/dev/null && pid_alive "$CTLD_PID" slurmctld; then
        sinfo
    fi
}

# --- install ---------------------------------------------------------------

install_packages() {
    local missing=() pkg
    for pkg in slurm-wlm munge; do
        if ! dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        say "packages: slurm-wlm and munge already installed"
        return 0
    fi
    say "packages: installing ${missing[*]} (apt-get, no recommends)"
    local t0=$SECONDS
    # lists on a fresh image may be missing or stale: refresh before installing
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    say "packages: installed in $((SECONDS - t0)) s"
}

# --- munge -----------------------------------------------------------------

setup_munge() {
    getent passwd munge >/dev/null || die "user munge missing after installing munge"
    # munged refuses group/world-writable directories and a readable key
    install -d -o munge -g munge -m 0700 /etc/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    install -d -o munge -g munge -m 0700 /var/log/munge
    # the socket dir lives in /run, which a reboot empties
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    if [[ ! -s "$MUNGE_KEY" ]]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY"
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
        say "munge: created $MUNGE_KEY"
    else
        say "munge: key $MUNGE_KEY exists"
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"

    if pid_alive "$MUNGE_PID" munged; then
        say "munge: munged already running (pid $(tr -dc '0-9' <"$MUNGE_PID"))"
    else
        # a stale socket lock from a killed munged blocks the start; --force removes it
        runuser -u munge -- /usr/sbin/munged --force \
            --socket="$MUNGE_RUN/munge.socket.2" \
            --pid-file="$MUNGE_PID" \
            --log-file=/var/log/munge/munged.log
        say "munge: started munged"
    fi
    local i
    for ((i = 0; i < 50; i++)); do
        if munge -n -S "$MUNGE_RUN/munge.socket.2" 2>/dev/null | unmunge -S "$MUNGE_RUN/munge.socket.2" >/dev/null 2>&1; then
            say "munge: credential round trip ok"
            return 0
        fi
        sleep 0.2
    done
    show_logs
    die "munge: munge -n | unmunge fails"
}

# --- slurm.conf ------------------------------------------------------------

write_conf() {
    local cpus mem_total_mb real_mb def_mem tmp topo="" hw
    cpus="$(nproc)"
    # the socket/core/thread layout as slurmd sees it, when its CPU count is
    # ours (otherwise slurmd assumes one core per socket and logs a mismatch)
    hw="$(/usr/sbin/slurmd -C 2>/dev/null | head -n 1 || true)"
    if [[ "$hw" =~ CPUs=([0-9]+)\ Boards=([0-9]+)\ SocketsPerBoard=([0-9]+)\ CoresPerSocket=([0-9]+)\ ThreadsPerCore=([0-9]+) ]] &&
        [[ "${BASH_REMATCH[1]}" == "$cpus" ]]; then
        topo=" Boards=${BASH_REMATCH[2]} SocketsPerBoard=${BASH_REMATCH[3]} CoresPerSocket=${BASH_REMATCH[4]} ThreadsPerCore=${BASH_REMATCH[5]}"
    fi
    mem_total_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    real_mb=$((mem_total_mb - MEM_RESERVE_MB))
    ((real_mb >= 512)) || real_mb=$((mem_total_mb * 3 / 4))
    if [[ -n "${SLURM_DEF_MEM_PER_CPU:-}" ]]; then
        def_mem="$SLURM_DEF_MEM_PER_CPU"
    else
        def_mem=$((real_mb / cpus))
        ((def_mem <= 1024)) || def_mem=1024
    fi

    install -d -m 0755 "$CONF_DIR"
    tmp="$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")"
    cat >"$tmp" <<EOF
# Written by deploy/slurm/single-node.sh: one machine, controller and compute
# node in one. Rerunning the script rewrites this file.
ClusterName=blockseg
# the controller address is given explicitly so that nothing resolves $NODE
# to another interface; NoCtldInAddrAny / NoInAddrAny make slurmctld, slurmd
# and srun bind to that address (127.0.0.1) instead of 0.0.0.0
SlurmctldHost=$NODE(127.0.0.1)
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
SlurmUser=$SLURM_USER
SlurmdUser=root
MpiDefault=none
# no cgroups here: processes are tracked through /proc, tasks are not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that does not say --mem gets this much per CPU; without it, it would
# be given the whole node's memory and block every other job
DefMemPerCPU=$def_mem
# no accounting daemon
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# a node that was down comes back by itself once its slurmd registers
ReturnToService=2
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# quick turnover on one machine: scancel'd jobs get SIGKILL 5 s after SIGTERM
KillWait=5
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=120
SlurmdTimeout=300
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$cpus$topo RealMemory=$real_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 0644 "$tmp"
    if [[ -f "$CONF" ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        say "slurm.conf: unchanged ($NODE: CPUs=$cpus RealMemory=${real_mb} MB, DefMemPerCPU=$def_mem)"
        CONF_CHANGED=0
    else
        mv -f "$tmp" "$CONF"
        say "slurm.conf: written to $CONF ($NODE: CPUs=$cpus RealMemory=${real_mb} MB, DefMemPerCPU=$def_mem)"
        CONF_CHANGED=1
    fi
}

# --- slurm daemons ---------------------------------------------------------

setup_slurm_dirs() {
    if ! getent passwd "$SLURM_USER" >/dev/null; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$SLURM_USER"
        say "created system user $SLURM_USER"
    fi
    install -d -m 0755 "$LOG_DIR" "$RUN_DIR"
    chown "$SLURM_USER:$SLURM_USER" "$LOG_DIR" "$RUN_DIR"
    install -d -o "$SLURM_USER" -g "$SLURM_USER" -m 0700 "$CTLD_SPOOL"
    install -d -o root -g root -m 0755 "$SLURMD_SPOOL"
    # slurmctld runs as $SLURM_USER and must be able to append to its log
    touch "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"
    chown "$SLURM_USER:$SLURM_USER" "$LOG_DIR/slurmctld.log"
}

start_slurm() {
    if [[ "$CONF_CHANGED" == 1 ]] && { pid_alive "$SLURMD_PID" slurmd || pid_alive "$CTLD_PID" slurmctld; }; then
        say "slurm.conf changed: restarting the slurm daemons"
        stop_pidfile "$SLURMD_PID" slurmd
        stop_pidfile "$CTLD_PID" slurmctld
    fi
    if pid_alive "$CTLD_PID" slurmctld; then
        say "slurmctld: already running (pid $(tr -dc '0-9' <"$CTLD_PID"))"
    else
        /usr/sbin/slurmctld -f "$CONF"
        say "slurmctld: started"
    fi
    local i
    for ((i = 0; i < 50; i++)); do
        scontrol ping 2>/dev/null | grep -q 'is UP' && break
        sleep 0.2
    done
    if pid_alive "$SLURMD_PID" slurmd; then
        say "slurmd: already running (pid $(tr -dc '0-9' <"$SLURMD_PID"))"
    else
        SLURMD_STARTED_AT=$(($(date +%s) - 1))
        /usr/sbin/slurmd -f "$CONF"
        say "slurmd: started"
    fi
}

# seconds since the epoch at which slurmd on $NODE last registered (0: never)
slurmd_registered_at() {
    local line when
    line="$(scontrol show node -o "$NODE" 2>/dev/null || true)"
    [[ "$line" =~ SlurmdStartTime=([0-9T:-]+) ]] || { echo 0; return; }
    when="$(date -d "${BASH_REMATCH[1]}" +%s 2>/dev/null || echo 0)"
    echo "$when"
}

wait_idle() {
    local t0=$SECONDS state="" resumed=0
    while ((SECONDS - t0 < WAIT_S)); do
        # a restarted slurmctld reports the node's saved state (idle) before
        # the new slurmd has registered: wait for the registration first
        if ((SLURMD_STARTED_AT > 0)) && (($(slurmd_registered_at) < SLURMD_STARTED_AT)); then
            state="not registered yet"
            sleep 0.5
            continue
        fi
        state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1 || true)"
        case "$state" in
            idle | mixed | allocated | completing)
                say "node $NODE is $state (after $((SECONDS - t0)) s)"
                return 0
                ;;
            inval*)
                # slurmd found less than slurm.conf promises (CPUs, memory):
                # no resume helps; the reason says what differs
                say "node $NODE is invalid: $(sinfo -h -n "$NODE" -o %E)"
                break
                ;;
            down* | drain* | fail*)
                # ReturnToService=2 brings a down node back when slurmd
                # registers; a drain (e.g. a config mismatch) needs a resume
                if ((resumed == 0)) && [[ "$state" != *"*"* ]]; then
                    say "node $NODE is $state ($(sinfo -h -n "$NODE" -o %E)): resuming"
                    scontrol update NodeName="$NODE" State=RESUME || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.5
    done
    say "node $NODE did not become idle (state: ${state:-unknown}, waited $((SECONDS - t0)) s of $WAIT_S)"
    sinfo -N -l >&2 || true
    scontrol show node "$NODE" >&2 || true
    show_logs
    exit 1
}

start_all() {
    local t0=$SECONDS
    [[ "$(id -u)" == 0 ]] || die "run as root (it installs packages and starts daemons)"
    install_packages
    setup_munge
    CONF_CHANGED=0
    SLURMD_STARTED_AT=0
    write_conf
    setup_slurm_dirs
    start_slurm
    wait_idle
    sinfo
    say "ready in $((SECONDS - t0)) s: partition debug on $NODE (127.0.0.1); logs in $LOG_DIR"
}

case "$ACTION" in
    start | up) start_all ;;
    stop | down)
        [[ "$(id -u)" == 0 ]] || die "run as root"
        stop_all
        ;;
    status) status_all ;;
    -h | --help | help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown action '$ACTION' (start | stop | status)" ;;
esac
