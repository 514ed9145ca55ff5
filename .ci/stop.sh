# shellcheck shell=bash
# Sourced by the CI and bench scripts: `stop_pids PID...` stops processes the script started,
# bounded: SIGTERM, up to 30 s for them to end (a server drains its calls), then SIGKILL. A
# server that hangs at shutdown never hangs the script's exit.
stop_pids() {
  local pid alive
  (($# > 0)) || return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 1 300); do
    alive=0
    for pid in "$@"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "$@"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "stop.sh: process $pid did not end 30 s after SIGTERM: killed" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait "$@" 2>/dev/null || true
}
