#!/usr/bin/env bash
# Makes sure a Docker engine answers, for the kind cluster: when none does, installs Debian's
# docker.io (with jq and debootstrap, which the node image build needs) and starts dockerd with
# an OCI runtime wrapper that drops the capabilities the machine's bounding set lacks.
#
#   e2e/kind/docker.sh          start (or find) an engine
#   e2e/kind/docker.sh stop     stop the engine this script started, if any
#
# Why the wrapper: on VMs whose capability bounding set lacks some capability (CAP_SYS_RESOURCE,
# typically), runc refuses every `--privileged` container with "unable to apply caps: operation
# not permitted", and kind runs its nodes and every `docker exec` into them privileged.
set -euo pipefail

cache="${RACKSCALE_CACHE:-$HOME/.cache/rackscale}"
state="$cache/kind/dockerd"
pidfile="$state/dockerd.pid"
wrapper=/usr/local/libexec/rackscale/runc-capbnd

die() { echo "docker.sh: error: $*" >&2; exit 1; }
log() { echo "docker.sh: $*" >&2; }

engine_answers() { command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; }

if [[ "${1:-}" == stop ]]; then
  if [[ -f "$pidfile" ]]; then
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping dockerd (pid $pid)"
      kill "$pid"
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && die "dockerd (pid $pid) did not stop within 30 s"
    fi
    rm -f "$pidfile"
  fi
  exit 0
fi

if engine_answers; then
  log "a Docker engine answers: $(docker version --format '{{.Server.Version}}')"
  exit 0
fi

need=()
[[ -x /usr/sbin/dockerd || -x /usr/bin/dockerd ]] || need+=(docker.io)
command -v jq >/dev/null || need+=(jq)
command -v debootstrap >/dev/null || need+=(debootstrap)
if (( ${#need[@]} )); then
  command -v apt-get >/dev/null || die "no Docker engine answers and apt-get is missing: install Docker, jq and debootstrap"
  (( EUID == 0 )) || die "no Docker engine answers; installing ${need[*]} needs root (run as root or install them)"
  start=$SECONDS
  log "installing ${need[*]} from Debian (cold: 1-2 min)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
  log "installed ${need[*]} in $((SECONDS - start))s"
fi
(( EUID == 0 )) || die "no Docker engine answers and starting dockerd needs root"
dockerd="$(command -v dockerd || echo /usr/sbin/dockerd)"
runc="$(command -v runc || echo /usr/sbin/runc)"
[[ -x "$runc" ]] || die "runc is missing (it comes with docker.io)"

# The wrapper: every capability outside this process's bounding set is removed from the
# container's config (create/run) or the exec'd process (exec) before runc sees it.
mkdir -p "$(dirname "$wrapper")"
cat > "$wrapper.tmp" <<WRAP
#!/usr/bin/env bash
# Written by rackscale's e2e/kind/docker.sh: runc without the capabilities the bounding set lacks.
set -euo pipefail
names=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE
  NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT
  SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE
  AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ
  PERFMON BPF CHECKPOINT_RESTORE)
bnd=\$((16#\$(awk '/^CapBnd/ {print \$2}' /proc/self/status)))
drop=()
for i in "\${!names[@]}"; do (( (bnd >> i) & 1 )) || drop+=("\"CAP_\${names[\$i]}\""); done
filter() { # filter FILE JQ_PATH
  [[ -f "\$1" && \${#drop[@]} -gt 0 ]] || return 0
  local list; list="[\$(IFS=,; echo "\${drop[*]}")]"
  jq --argjson drop "\$list" "if \$2 then \$2 |= with_entries(.value |= ((. // []) - \\\$drop)) else . end" \
    "\$1" > "\$1.capbnd" && mv "\$1.capbnd" "\$1"
}
args=("\$@")
for ((i = 0; i < \${#args[@]}; i++)); do
  case "\${args[\$i]}" in
    --bundle|-b) filter "\${args[\$((i + 1))]}/config.json" .process.capabilities ;;
    --bundle=*) filter "\${args[\$i]#--bundle=}/config.json" .process.capabilities ;;
    --process|-p) filter "\${args[\$((i + 1))]}" .capabilities ;;
    --process=*) filter "\${args[\$i]#--process=}" .capabilities ;;
  esac
done
exec $runc "\$@"
WRAP
chmod 755 "$wrapper.tmp"; mv "$wrapper.tmp" "$wrapper"

mkdir -p /etc/docker "$state"
if [[ ! -f /etc/docker/daemon.json ]] || ! grep -q rackscale-capbnd /etc/docker/daemon.json; then
  [[ -f /etc/docker/daemon.json ]] && cp /etc/docker/daemon.json "/etc/docker/daemon.json.before-rackscale"
  cat > /etc/docker/daemon.json <<JSON
{
  "runtimes": {"rackscale-capbnd": {"path": "$wrapper"}},
  "default-runtime": "rackscale-capbnd"
}
JSON
fi

log "starting dockerd (log: $state/dockerd.log)"
# setsid: the engine outlives this script and make; `docker.sh stop` (make kind-down) ends it.
setsid "$dockerd" --pidfile "$pidfile" >"$state/dockerd.log" 2>&1 < /dev/null &
for _ in $(seq 120); do
  engine_answers && { log "dockerd is up: $(docker version --format '{{.Server.Version}}')"; exit 0; }
  sleep 0.5
done
tail -n 20 "$state/dockerd.log" >&2 || true
die "dockerd did not answer within 60 s; its log is $state/dockerd.log"
