#!/usr/bin/env bash
# Stop the local Slurm cluster started by start.sh (slurmd, slurmctld, munged). Idempotent.
#   BIGFT_SLURM_DIR   state directory (default /tmp/bigft-slurm)
#   BIGFT_SLURM_PURGE=1  also delete the state directory (job state, logs, munge key)
#   BIGFT_SLURM_KEEP_JOBS=1  don't cancel jobs first (running job steps then keep running
#                            without slurmd; pending jobs survive a stop/start either way
#                            unless cancelled)
set -uo pipefail
DIR="${BIGFT_SLURM_DIR:-/tmp/bigft-slurm}"
log() { echo "[bigft-slurm] $*" >&2; }

stop_pidfile() {  # name pidfile
  local name=$1 pidf=$2 pid
  if [ ! -s "$pidf" ]; then log "$name: not running (no pid file)"; return 0; fi
  pid="$(cat "$pidf")"
  if ! kill -0 "$pid" 2>/dev/null; then log "$name: not running (stale pid $pid)"; rm -f "$pidf"; return 0; fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "$name: pid $pid ignored SIGTERM, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null; sleep 0.5; fi
  rm -f "$pidf"
  log "$name: stopped (pid $pid)"
}

# 1. Cancel all jobs while slurmctld is up, so no job processes outlive the daemons.
if [ "${BIGFT_SLURM_KEEP_JOBS:-0}" != 1 ] && [ -s "$DIR/run/slurmctld.pid" ] \
   && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
  export SLURM_CONF="$DIR/etc/slurm.conf"
  jobs="$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 30); do
      [ -z "$(timeout 5 squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break; sleep 0.5
    done
  fi
fi

# 2. Daemons.
stop_pidfile slurmd    "$DIR/run/slurmd.pid"
stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
stop_pidfile munged    "$DIR/run/munged.pid"
rm -f "$DIR/munge/munge.socket" "$DIR/munge/munge.socket.lock"

# 3. Leftover slurmstepd of this cluster (their cwd is $DIR/log): kill them and their children.
descendants() { local c; for c in $(pgrep -P "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done; }
logdir="$(readlink -f "$DIR/log" 2>/dev/null || true)"
if [ -n "$logdir" ]; then
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    [ "$(readlink -f "$p/cwd" 2>/dev/null)" = "$logdir" ] || continue
    kids="$(descendants "$pid" | tr '\n' ' ')"
    log "killing leftover slurmstepd $pid (children: ${kids:-none})"
    kill -KILL "$pid" $kids 2>/dev/null || true
  done
fi

if [ "${BIGFT_SLURM_PURGE:-0}" = 1 ] && [ -d "$DIR" ]; then
  rm -rf "$DIR"; log "removed $DIR"
fi
