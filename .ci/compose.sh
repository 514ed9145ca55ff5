#!/usr/bin/env bash
# The container deployment (Dockerfile, docker-compose.yml), checked without a Docker engine:
# none runs on the CI machine. Called by .ci/run; developers can run it alone:
#   bash .ci/compose.sh
#
#   1. docker-compose.yml validates offline (`docker-compose config`, Debian's docker-compose,
#      installed if missing) and has the services, healthchecks, secret and start order the
#      README describes;
#   2. the Dockerfile keeps its shape (multi-stage, non-root USER, HEALTHCHECK, the same cargo
#      command as step 3) and .dockerignore keeps keys and build output out of the build context;
#   3. the release build the Dockerfile runs, run here, and both binaries start (--version);
#   4. the image's health-check command, against a release server started here as in the image
#      (its listen host, settings from the environment; SQLite): exit 0 while the server serves,
#      non-zero once it has stopped; SIGTERM stops it cleanly.
# Not exercised: building or running the image, PostgreSQL in compose, the secret mount, the
# network between containers, the published ports.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=.ci/apt.sh
source .ci/apt.sh
# shellcheck source=.ci/stop.sh
source .ci/stop.sh

# The command the Dockerfile runs; step 2 checks that the Dockerfile still says exactly this.
BUILD_CMD=(cargo build --release --locked -p blangko-server -p blangko-counter)

phase_start=$SECONDS
phase() {
  echo "--- compose.sh: $1 (+$((SECONDS - phase_start))s)"
}
fail() {
  echo "compose.sh: $*" >&2
  exit 1
}

# --- 1. docker-compose.yml ------------------------------------------------------------------
phase "docker-compose.yml"
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "docker-compose not found: installing Debian's docker-compose (without recommends: no engine)"
  apt_install docker-compose
fi
docker-compose --version

# Validation is offline: no engine, no image pulled, and ./nik.key need not exist (it is
# created by whoever runs the deployment, never committed).
config_file=$(mktemp)
trap 'rm -f "$config_file"' EXIT
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml config >"$config_file"

# The resolved configuration, checked with Python's yaml (a dependency of Debian's docker-compose,
# installed for the system Python, which may not be the first python3 on PATH).
find_python_with_yaml() {
  python=""
  for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
      python=$candidate
      return
    fi
  done
}
find_python_with_yaml
if [[ -z $python ]]; then
  echo "no python3 with the yaml module: installing Debian's python3-yaml"
  apt_install python3-yaml
  find_python_with_yaml
fi
[[ -n $python ]] || fail "no python3 with the yaml module (Debian: apt-get install python3-yaml)"
"$python" - "$config_file" <<'PY'
import sys

import yaml

with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)
services = config.get("services", {})
errors = []


def check(condition, message):
    if not condition:
        errors.append(message)


expected = {"postgres", "server-a", "server-b", "client"}
check(set(services) == expected, f"services are {sorted(services)}, expected {sorted(expected)}")

pg = services.get("postgres", {})
check(str(pg.get("image", "")).startswith("postgres:15"), "postgres: image postgres:15")
check("pg_isready" in " ".join(pg.get("healthcheck", {}).get("test", [])), "postgres: pg_isready healthcheck")
check(
    any(str(v).startswith("pgdata:") for v in pg.get("volumes", [])) and "pgdata" in config.get("volumes", {}),
    "postgres: named volume pgdata",
)

secret_file = config.get("secrets", {}).get("nik_key", {}).get("file", "")
check(secret_file.endswith("/nik.key"), "top-level secret nik_key with file ./nik.key")
tokens_file = config.get("secrets", {}).get("tokens", {}).get("file", "")
check(tokens_file.endswith("/tokens.txt"), "top-level secret tokens with file ./tokens.txt")

def port_text(p):
    """A published port as HOST_IP:PUBLISHED:TARGET, from Compose 1.x's short string or the
    long form (a mapping) that Compose v2's `config` writes."""
    if isinstance(p, dict):
        return f"{p.get('host_ip', '')}:{p.get('published', '')}:{p.get('target', '')}"
    return str(p)


ports = {}
for name in ("server-a", "server-b"):
    s = services.get(name, {})
    env = s.get("environment", {})
    test = " ".join(s.get("healthcheck", {}).get("test", []))
    check(s.get("image") == "blangko:local", f"{name}: image blangko:local")
    check("blangko-counter" in test and test.endswith(" status"), f"{name}: healthcheck `blangko-counter ... status`")
    check(s.get("depends_on", {}).get("postgres", {}).get("condition") == "service_healthy",
          f"{name}: depends on postgres being healthy")
    check(str(env.get("BLANGKO_DATABASE_URL", "")).startswith("postgres://"), f"{name}: BLANGKO_DATABASE_URL postgres://")
    check("@postgres:5432/blangko" in str(env.get("BLANGKO_DATABASE_URL", "")), f"{name}: database at postgres:5432/blangko")
    check(env.get("BLANGKO_LOG_FORMAT") == "json", f"{name}: BLANGKO_LOG_FORMAT=json")
    check(env.get("BLANGKO_NIK_KEY_FILE") == "/run/secrets/nik_key", f"{name}: BLANGKO_NIK_KEY_FILE=/run/secrets/nik_key")
    check("BLANGKO_NIK_KEY" not in env, f"{name}: no NIK key inline in the environment")
    check(any((x if isinstance(x, str) else x.get("source")) == "nik_key" for x in s.get("secrets", [])),
          f"{name}: uses the nik_key secret")
    check(env.get("BLANGKO_TOKEN_FILE") == "/run/secrets/tokens", f"{name}: BLANGKO_TOKEN_FILE=/run/secrets/tokens")
    check(any((x if isinstance(x, str) else x.get("source")) == "tokens" for x in s.get("secrets", [])),
          f"{name}: uses the tokens secret")
    ports[name] = [port_text(p) for p in s.get("ports", [])]

check(any(p.startswith("127.0.0.1:50051:50051") for p in ports.get("server-a", [])), "server-a: port 50051 -> 50051")
check(any(p.startswith("127.0.0.1:50052:50051") for p in ports.get("server-b", [])), "server-b: port 50052 -> 50051")
for name, port in (("server-a", "9464"), ("server-b", "9465")):
    env = services.get(name, {}).get("environment", {})
    check(str(env.get("BLANGKO_METRICS_LISTEN", "")).endswith(":9464"), f"{name}: BLANGKO_METRICS_LISTEN on port 9464")
    check(any(p.startswith(f"127.0.0.1:{port}:9464") for p in ports.get(name, [])),
          f"{name}: metrics published on loopback port {port}")
check("--demo" in services.get("server-a", {}).get("command", []), "server-a: --demo")
# The image is built by one service only (several services building one image race under
# Compose v2), and the others never pull it: no registry has it.
builders = sorted(name for name, s in services.items() if "build" in s)
check(builders == ["server-a"], f"the image is built by server-a alone (built by {builders})")
for name in ("server-b", "client"):
    s = services.get(name, {})
    check(s.get("image") == "blangko:local" and s.get("pull_policy") == "never",
          f"{name}: image blangko:local, pull_policy never")
check(services.get("server-b", {}).get("depends_on", {}).get("server-a") is not None,
      "server-b: starts after server-a (which builds the image)")
check("--demo" not in services.get("server-b", {}).get("command", []) and
      "BLANGKO_DEMO" not in services.get("server-b", {}).get("environment", {}),
      "server-b: no --demo (only server-a seeds)")

client = services.get("client", {})
check(client.get("entrypoint") == ["blangko-counter"], "client: entrypoint blangko-counter")
check(str(client.get("restart")) == "no", 'client: restart "no"')
for name in ("server-a", "server-b"):
    check(client.get("depends_on", {}).get(name, {}).get("condition") == "service_healthy",
          f"client: depends on {name} being healthy")
servers = client.get("environment", {}).get("BLANGKO_SERVER", "")
check("http://server-a:50051" in servers and "http://server-b:50051" in servers, "client: BLANGKO_SERVER names both replicas")

if errors:
    for e in errors:
        print(f"docker-compose.yml: {e}", file=sys.stderr)
    sys.exit(1)
print(f"docker-compose.yml: valid; services {', '.join(sorted(services))}; healthchecks, secret, start order as expected")
PY

# --- 2. Dockerfile and .dockerignore ----------------------------------------------------------
phase "Dockerfile and .dockerignore"
grep -Eq '^FROM rust:1-bookworm AS builder' Dockerfile || fail "Dockerfile: no 'FROM rust:1-bookworm AS builder' stage"
grep -Eq '^FROM debian:bookworm-slim' Dockerfile || fail "Dockerfile: no debian:bookworm-slim runtime stage"
docker_build=$(grep -E '^[[:space:]]*cargo build' Dockerfile | sed -E 's/^[[:space:]]+//; s/[[:space:]]*(\\|&&.*)$//') || true
[[ $docker_build == "${BUILD_CMD[*]}" ]] \
  || fail "Dockerfile: its cargo command ('$docker_build') is not '${BUILD_CMD[*]}' (keep both the same)"
user=$(awk '$1 == "USER" { u = $2 } END { print u }' Dockerfile)
[[ -n $user && $user != root && $user != 0 && $user != 0:* && $user != root:* ]] \
  || fail "Dockerfile: the last USER ('${user:-none}') must be a non-root user"
grep -Eq '^HEALTHCHECK .*' Dockerfile || fail "Dockerfile: no HEALTHCHECK"
grep -Eq 'blangko-counter.*status' Dockerfile || fail "Dockerfile: HEALTHCHECK does not run 'blangko-counter ... status'"
grep -Eq '^ENTRYPOINT \["blangko-server"\]' Dockerfile || fail "Dockerfile: ENTRYPOINT is not blangko-server"
for pattern in target nik.key .git; do
  grep -qx "$pattern" .dockerignore || fail ".dockerignore: '$pattern' is not excluded"
done
echo "Dockerfile: multi-stage, USER $user, HEALTHCHECK, same cargo command; .dockerignore excludes target, nik.key, .git"

# --- 3. the release build the Dockerfile runs -------------------------------------------------
phase "${BUILD_CMD[*]}"
build_start=$SECONDS
"${BUILD_CMD[@]}"
echo "release build: $((SECONDS - build_start))s"
bin_dir="${CARGO_TARGET_DIR:-target}/release"
"$bin_dir/blangko-server" --version
"$bin_dir/blangko-counter" --version

# --- 4. the health-check command against a release server ------------------------------------
phase "health check against a release server"
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n $server_pid ]]; then
    stop_pids "$server_pid"
  fi
  rm -rf "$work" "$config_file"
}
trap cleanup EXIT

# A key in the documented format (openssl rand -hex 32: 64 hex characters and a newline).
if command -v openssl >/dev/null 2>&1; then
  openssl rand -hex 32 >"$work/nik.key"
else
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$work/nik.key" && echo >>"$work/nik.key"
fi

# Configured as in the container: a clean environment (no BLANGKO_* of this shell), the listen
# host of the image's ENV (port 0 here: any free port), settings from the environment.
image_listen=$(sed -n 's/^ENV BLANGKO_LISTEN=//p' Dockerfile)
[[ -n $image_listen ]] || fail "Dockerfile: no 'ENV BLANGKO_LISTEN=HOST:PORT'"
server_bin=$(realpath "$bin_dir/blangko-server")
counter_bin=$(realpath "$bin_dir/blangko-counter")

# Safe default: on the image's (non-loopback) listen address without a token file, the server
# refuses to start, naming the reason.
refused_rc=0
(
  cd "$work"
  # Bounded: a server that wrongly starts would otherwise serve for ever, and this check never
  # end (timeout's 124 then fails it below).
  exec env -i PATH="$PATH" BLANGKO_LISTEN="${image_listen%:*}:0" \
    BLANGKO_DATABASE_URL=sqlite:refused.db BLANGKO_NIK_KEY_FILE="$work/nik.key" \
    timeout 20 "$server_bin"
) >"$work/refused.out" 2>"$work/refused.err" || refused_rc=$?
[[ $refused_rc -ne 0 && $refused_rc -ne 124 ]] && grep -q "without authentication" "$work/refused.err" \
  || { cat "$work/refused.err" >&2; fail "the server started on ${image_listen%:*} without a token file"; }
echo "no token file on ${image_listen%:*}: refused to start (exit $refused_rc)"

# The token file as the compose secret provides it, made with the release binary.
"$server_bin" --token-file "$work/tokens.txt" token add ci-agency --role agency >"$work/token"
(
  cd "$work"
  exec env -i PATH="$PATH" BLANGKO_LISTEN="${image_listen%:*}:0" \
    BLANGKO_DATABASE_URL=sqlite:blangko.db BLANGKO_NIK_KEY_FILE="$work/nik.key" \
    BLANGKO_TOKEN_FILE="$work/tokens.txt" BLANGKO_LOG_FORMAT=json "$server_bin" --demo
) >"$work/server.out" 2>"$work/server.err" &
server_pid=$!

addr=""
for _ in $(seq 1 300); do
  addr=$(sed -n 's/^blangko-server listening on //p' "$work/server.out" | head -n 1)
  [[ -n $addr ]] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $addr ]]; then
  cat "$work/server.out" "$work/server.err" >&2
  fail "the release server did not start"
fi
echo "release server listening on $addr"

# The image's HEALTHCHECK command, on this server's port.
health=(env -i PATH="$PATH" "$counter_bin" --server "http://127.0.0.1:${addr##*:}" --timeout 3 status)
if ! "${health[@]}"; then
  cat "$work/server.err" >&2
  fail "health check failed against a serving server"
fi
echo "health check while serving: exit 0"

# With the token: an office's quota (GetQuota needs a principal); without it: refused.
# The token through the environment, as the README says: a command line shows in `ps`.
env -i PATH="$PATH" BLANGKO_TOKEN="$(<"$work/token")" "$counter_bin" --server "http://127.0.0.1:${addr##*:}" --timeout 3 --retries 0 \
  --office 3275 --service-point mpp status >/dev/null \
  || fail "status of office 3275 with the agency token failed"
if env -i PATH="$PATH" "$counter_bin" --server "http://127.0.0.1:${addr##*:}" --timeout 3 --retries 0 \
  --office 3275 --service-point mpp status >/dev/null 2>&1; then
  fail "status of office 3275 without a token succeeded"
fi
echo "token required for office data, health open: OK"

kill -TERM "$server_pid"
# Bounded: a shutdown that hangs is what this step is here to catch, not to wait for.
for _ in $(seq 1 300); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
  kill -KILL "$server_pid" 2>/dev/null || true
  fail "the server did not exit within 30 s of SIGTERM"
fi
server_rc=0
wait "$server_pid" || server_rc=$?
server_pid=""
[[ $server_rc -eq 0 ]] || { cat "$work/server.err" >&2; fail "the server exited $server_rc after SIGTERM (expected 0)"; }
echo "server stopped by SIGTERM: exit 0"

health_rc=0
"${health[@]}" >/dev/null 2>&1 || health_rc=$?
[[ $health_rc -ne 0 ]] || fail "health check passed with no server listening"
echo "health check with the server gone: exit $health_rc"

phase "done"
cat <<'EOF'
Exercised here: docker-compose.yml validated by docker-compose (offline) and its structure
checked; the Dockerfile's shape and build command; the same release build; both binaries'
--version; the image's health-check command against a release server configured as the image
configures it (listen host, environment; SQLite, not PostgreSQL), serving and gone; a clean exit
on SIGTERM; its refusal to start there without a token file; a token made by `token add`
required for office data while health stays open.
NOT exercised (no Docker engine here): building the image, running any container, PostgreSQL
under compose, the nik_key and tokens secret mounts and their file permissions, the compose
network and published ports, the healthcheck timings.
EOF
