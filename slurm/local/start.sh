#!/usr/bin/env bash
# Start a single-node local Slurm cluster (munged + slurmctld + slurmd) for bigft tests.
# Idempotent: installs missing packages, reuses the munge key, leaves running daemons alone.
#
#   BIGFT_SLURM_DIR   state directory (default /tmp/bigft-slurm)
#   BIGFT_SLURM_CTLD_PORT / BIGFT_SLURM_SLURMD_PORT   ports (default 6817 / 6818)
#   BIGFT_SLURM_TIMEOUT  seconds to wait for the node to become idle (default 60)
#
# Prints the `export SLURM_CONF=...` line clients need (it is also the last stdout line).
set -euo pipefail

DIR="${BIGFT_SLURM_DIR:-/tmp/bigft-slurm}"
CTLD_PORT="${BIGFT_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${BIGFT_SLURM_SLURMD_PORT:-6818}"
TIMEOUT="${BIGFT_SLURM_TIMEOUT:-60}"
CONF="$DIR/etc/slurm.conf"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE="$HERE/slurm.conf.template"

log() { echo "[bigft-slurm] $*" >&2; }
die() { echo "[bigft-slurm] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (daemons run as root, SlurmUser=root)"

# ---- 1. packages ----------------------------------------------------------------------
need=()
for pkg in slurmctld slurmd slurm-client munge; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]} (apt-get)"
  t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  log "installed in $((SECONDS - t0)) s"
fi

# ---- 2. directories -------------------------------------------------------------------
mkdir -p "$DIR"/{etc,log,run,state,spool,munge}
chmod 755 "$DIR" "$DIR"/{etc,log,run,state,spool}
chmod 700 "$DIR/munge"

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---- 3. munge (own key + socket under $DIR, so it never clashes with a system munged) --
MUNGE_KEY="$DIR/munge/munge.key"
MUNGE_SOCK="$DIR/munge/munge.socket"
MUNGE_PID="$DIR/run/munged.pid"
if [ ! -s "$MUNGE_KEY" ]; then
  log "generating munge key $MUNGE_KEY"
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$MUNGE_KEY" --force
  else
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
  fi
  chmod 600 "$MUNGE_KEY"
fi
if pid_alive "$MUNGE_PID"; then
  log "munged already running (pid $(cat "$MUNGE_PID"))"
else
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
  munged --force --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCK" --pid-file="$MUNGE_PID" \
         --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || die "munged failed to start; see $DIR/log/munged.log"
  for _ in $(seq 50); do [ -S "$MUNGE_SOCK" ] && break; sleep 0.1; done
  log "munged started (pid $(cat "$MUNGE_PID" 2>/dev/null || echo '?'))"
fi
munge -S "$MUNGE_SOCK" -n </dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null \
  || die "munge round trip failed; tail of $DIR/log/munged.log:
$(tail -n 20 "$DIR/log/munged.log" 2>/dev/null)"

# ---- 4. slurm.conf ----------------------------------------------------------------------
HOST="$(hostname -s)"
NCPU="$(nproc)"
MEM_TOTAL="$(free -m | awk '/^Mem:/{print $2}')"
MARGIN=$(( MEM_TOTAL / 10 )); [ "$MARGIN" -lt 512 ] && MARGIN=512
REALMEM=$(( MEM_TOTAL - MARGIN )); [ "$REALMEM" -lt 1 ] && REALMEM=1
# NodeAddr: the host name must resolve; otherwise fall back to loopback.
if getent hosts "$HOST" >/dev/null; then ADDR="$HOST"; else ADDR=127.0.0.1; fi

tmp="$(mktemp "$CONF.XXXX")"
sed -e "s|@HOST@|$HOST|g" -e "s|@ADDR@|$ADDR|g" -e "s|@NCPU@|$NCPU|g" \
    -e "s|@REALMEM@|$REALMEM|g" -e "s|@DIR@|$DIR|g" -e "s|@MUNGE_SOCK@|$MUNGE_SOCK|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
    "$TEMPLATE" > "$tmp"
if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
  rm -f "$tmp"
else
  mv "$tmp" "$CONF"; chmod 644 "$CONF"
  CONF_CHANGED=1
fi
export SLURM_CONF="$CONF"

# ---- 5. daemons -------------------------------------------------------------------------
CTLD_PID="$DIR/run/slurmctld.pid"
SLURMD_PID="$DIR/run/slurmd.pid"
if pid_alive "$CTLD_PID"; then
  log "slurmctld already running (pid $(cat "$CTLD_PID"))"
  [ "${CONF_CHANGED:-0}" = 1 ] && { log "slurm.conf changed: scontrol reconfigure"; scontrol reconfigure || true; }
else
  slurmctld -f "$CONF" || die "slurmctld failed to start; tail of $DIR/log/slurmctld.log:
$(tail -n 30 "$DIR/log/slurmctld.log" 2>/dev/null)"
  log "slurmctld started"
fi
if pid_alive "$SLURMD_PID"; then
  log "slurmd already running (pid $(cat "$SLURMD_PID"))"
else
  SLURMD_LAUNCHED_AT=$(( $(date +%s) - 1 ))
  slurmd -f "$CONF" || die "slurmd failed to start; tail of $DIR/log/slurmd.log:
$(tail -n 30 "$DIR/log/slurmd.log" 2>/dev/null)"
  log "slurmd started"
fi

# ---- 6. wait for the node to be idle ----------------------------------------------------
deadline=$(( SECONDS + TIMEOUT ))
state=""
while :; do
  state="$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true)"
  # "idle*" etc. (trailing *) means slurmd has not (re-)registered yet; also require that
  # slurmd registered after this script launched it (restored state can say IDLE early).
  start_ok=1
  if [ -n "${SLURMD_LAUNCHED_AT:-}" ]; then
    sst="$(scontrol show node "$HOST" 2>/dev/null | grep -oP 'SlurmdStartTime=\K\S+' || true)"
    sst_s="$(date -d "$sst" +%s 2>/dev/null || echo 0)"
    [ "$sst_s" -ge "$SLURMD_LAUNCHED_AT" ] || start_ok=0
  fi
  case "$state:$start_ok" in
    idle:1|mixed:1|allocated:1|completing:1) break ;;
    down*|drain*|fail*)
      # e.g. left DOWN from a previous run: bring it back.
      scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "[bigft-slurm] ERROR: node $HOST not idle after ${TIMEOUT}s (state: '${state:-unknown}')" >&2
    sinfo -N -l 2>&1 | sed 's/^/  sinfo: /' >&2 || true
    for f in slurmctld slurmd munged; do
      echo "---- tail $DIR/log/$f.log" >&2; tail -n 20 "$DIR/log/$f.log" 2>/dev/null >&2 || true
    done
    exit 1
  fi
  sleep 1
done
log "node $HOST is $state (CPUs=$NCPU RealMemory=${REALMEM}M) after ${SECONDS}s"
echo "export SLURM_CONF=$CONF"
