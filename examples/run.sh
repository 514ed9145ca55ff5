#!/usr/bin/env bash
# Runs the example clients (Python, then Go) against a live blangko-server:
#
#   examples/run.sh [SERVER_BINARY]
#
#   1. builds the server (`cargo build -p blangko-server`) unless SERVER_BINARY is given;
#   2. prepares both examples: code generated from proto/, dependencies installed when missing
#      (examples/python/run.sh prepare, examples/go/run.sh prepare);
#   3. creates a token file in a fresh temporary directory with the server's `token add`: an
#      agency token, and a counter token for Kota Bekasi (3275), service point mpp;
#   4. starts the server on a free loopback port (--listen 127.0.0.1:0) with a fresh SQLite file
#      there and --demo, and waits (bounded) for grpc.health.v1 to answer SERVING;
#   5. runs the Python example, then the Go example (each bounded in time);
#   6. stops the server (also on any failure or interrupt) and removes the temporary directory.
#
# Exit status: 0 when both examples passed; 1 otherwise (the server's log is shown then).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

OFFICE="3275"
SERVICE_POINT="mpp"
START_TIMEOUT_SECS=30
EXAMPLE_TIMEOUT_SECS=180

log() { echo "examples/run.sh: $*"; }

# --- 1. the server binary ---------------------------------------------------------------------------
if [[ $# -gt 1 ]]; then
  echo "usage: examples/run.sh [SERVER_BINARY]" >&2
  exit 2
fi
if [[ $# -eq 1 ]]; then
  server="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
else
  log "building the server (cargo build -p blangko-server)"
  (cd "$repo" && cargo build --locked -p blangko-server)
  target_dir="$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  server="$target_dir/debug/blangko-server"
fi
if [[ ! -x "$server" ]]; then
  echo "examples/run.sh: no server binary at $server" >&2
  exit 1
fi
log "server binary: $server ($("$server" --version))"

# --- 2. the examples, ready to run -----------------------------------------------------------------
bash "$here/python/run.sh" prepare
bash "$here/go/run.sh" prepare

# --- 3. a fresh directory and token file -----------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/blangko-examples.XXXXXX")"
server_pid=""
example_pid=""

stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    # Bounded: the server drains for at most --drain-timeout-secs; then it is killed.
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$server_pid" 2>/dev/null; then
      log "server did not stop within 10 s: killing it"
      kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}

show_server_log() {
  if [[ -s "$work/server.log" ]]; then
    echo "--- last lines of the server's log ---"
    tail -n 40 "$work/server.log"
    echo "---"
  fi
}

on_exit() {
  local rc=$?
  if [[ -n "$example_pid" ]]; then
    kill -TERM "$example_pid" 2>/dev/null || true
    wait "$example_pid" 2>/dev/null || true
  fi
  stop_server
  if [[ $rc -ne 0 ]]; then
    show_server_log
  fi
  rm -rf "$work"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tokens="$work/tokens.txt"
agency_token="$("$server" --token-file "$tokens" token add example-agency --role agency 2>/dev/null)"
counter_token="$("$server" --token-file "$tokens" token add example-counter --role counter \
  --office "$OFFICE" --service-points "$SERVICE_POINT" 2>/dev/null)"
log "token file with an agency and a counter ($OFFICE/$SERVICE_POINT):"
"$server" --token-file "$tokens" token list | sed 's/^/  /'

# --- 4. the server ---------------------------------------------------------------------------------
NO_COLOR=1 "$server" \
  --listen 127.0.0.1:0 \
  --database "sqlite:$work/blangko.db" \
  --demo \
  --token-file "$tokens" \
  --drain-timeout-secs 2 \
  >"$work/server.out" 2>"$work/server.log" &
server_pid=$!

# The server prints "blangko-server listening on ADDR" once it has bound the port.
addr=""
deadline=$((SECONDS + START_TIMEOUT_SECS))
while [[ -z "$addr" ]]; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "examples/run.sh: the server exited during start" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "examples/run.sh: the server did not report its address within ${START_TIMEOUT_SECS}s" >&2
    exit 1
  fi
  addr="$(sed -n 's/^blangko-server listening on //p' "$work/server.out" | head -n 1)"
  [[ -n "$addr" ]] || sleep 0.1
done
log "server (pid $server_pid) listening on $addr"
"$here/go/.bin/wait-healthy" -addr "$addr" -timeout "${START_TIMEOUT_SECS}s"

# --- 5. the examples ---------------------------------------------------------------------------------
export BLANGKO_TARGET="$addr"
export BLANGKO_AGENCY_TOKEN="$agency_token"
export BLANGKO_COUNTER_TOKEN="$counter_token"
export BLANGKO_OFFICE="$OFFICE"
export BLANGKO_SERVICE_POINT="$SERVICE_POINT"

results=()
failed=0
run_example() {
  local name="$1"
  shift
  echo
  log "=== $name example ==="
  local start=$SECONDS rc=0
  # In the background and waited for, so that a signal to this script acts at once (bash runs
  # traps only between foreground commands); on_exit ends the example too.
  BLANGKO_COUNTER_ID="loket-$name" timeout "$EXAMPLE_TIMEOUT_SECS" "$@" &
  example_pid=$!
  wait "$example_pid" || rc=$?
  example_pid=""
  if [[ $rc -eq 0 ]]; then
    results+=("$(printf '%-7s OK      (%ss)' "$name" $((SECONDS - start)))")
  else
    [[ $rc -eq 124 ]] && log "$name example timed out after ${EXAMPLE_TIMEOUT_SECS}s"
    results+=("$(printf '%-7s FAILED  (exit %s, %ss)' "$name" "$rc" $((SECONDS - start)))")
    failed=1
  fi
}
run_example python "$here/python/.venv/bin/python" "$here/python/agency_example.py"
run_example go "$here/go/.bin/agency-example"

# --- 6. stop and report -----------------------------------------------------------------------------
stop_server
echo
log "results:"
printf '  %s\n' "${results[@]}"
if [[ $failed -ne 0 ]]; then
  log "FAILED"
  exit 1
fi
log "both examples passed"
