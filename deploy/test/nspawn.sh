# shellcheck shell=bash
# A Debian root booted with systemd-nspawn, for the deploy tests (sourced, bash).
#
#   boot_host DIR NAME LOG [nspawn options...]   boot DIR as host NAME (console to LOG); sets
#                                                nspawn_pid and init_pid; fails (the console's
#                                                tail on stderr) unless it reaches "running"
#                                                or "degraded" (whose failed units it lists)
#   in_host CMD...                               run CMD in the host's namespaces
#   stop_host                                    power it off: SIGTERM to nspawn (the host's
#                                                systemd shuts down), SIGKILL after 10 s
#
# --register=no --keep-unit: the machine running the tests has no systemd as PID 1 and no
# D-Bus. With --network-namespace-path nspawn leaves CAP_NET_ADMIN out of the host's
# bounding set (it adds it only with --private-network): pass --capability=CAP_NET_ADMIN
# where the host runs an agent.
nspawn_pid='' init_pid='' host_state=''

boot_host() {
  local dir=$1 name=$2 log=$3
  shift 3
  systemd-nspawn -D "$dir" -M "$name" -b --register=no --keep-unit --console=read-only "$@" \
    </dev/null >"$log" 2>&1 &
  nspawn_pid=$!
  init_pid=''
  for _ in $(seq 1 100); do
    init_pid=$(pgrep -P "$nspawn_pid" -x systemd || true)
    [ -n "$init_pid" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || { tail -n 30 "$log" >&2; echo "systemd-nspawn exited" >&2; return 1; }
    sleep 0.1
  done
  [ -n "$init_pid" ] || { echo "no init under systemd-nspawn ($nspawn_pid)" >&2; return 1; }
  # Until its systemd answers (its bus comes up a moment after boot starts) and has booted.
  host_state=''
  for _ in $(seq 1 300); do
    host_state=$(nsenter --target="$init_pid" --mount --pid -- systemctl is-system-running 2>/dev/null || true)
    case $host_state in running | degraded | maintenance | stopping) break ;; esac
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.2
  done
  case $host_state in
    running) ;;
    degraded) in_host systemctl --failed --no-pager ;;
    *) tail -n 30 "$log" >&2; echo "the host did not boot ($host_state)" >&2; return 1 ;;
  esac
}

in_host() { nsenter --target="$init_pid" --mount --pid --uts --ipc --net -- "$@"; }

stop_host() {
  { [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; } || return 0
  kill -TERM "$nspawn_pid"
  for _ in $(seq 1 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$nspawn_pid" 2>/dev/null && kill -KILL "$nspawn_pid"
  wait "$nspawn_pid" 2>/dev/null || true
}
