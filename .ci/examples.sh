#!/usr/bin/env bash
# CI step: the example clients in other languages (examples/python, examples/go), run against a
# live server by examples/run.sh. Installs what is missing, from the package registries only:
#   - Python's venv module (Debian's python3-venv) when the interpreter lacks it;
#   - Go (Debian's golang-go) when there is no `go`; go.mod's toolchain then comes from the Go
#     module proxy (GOTOOLCHAIN=auto);
#   - the example's venv with requirements.txt (pip), protoc-gen-go and protoc-gen-go-grpc
#     (go install) and the Go modules of go.sum: done by examples/*/run.sh prepare, each only when
#     missing or of another version.
# Idempotent: a second run reuses the venv, the plugins and the module cache.
#
#   bash .ci/examples.sh [SERVER_BINARY]     (without it the server is built with cargo)
set -euo pipefail

repo_root="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
cd "$repo_root"
start=$SECONDS

apt_updated=""
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [[ -z "$apt_updated" ]]; then
    apt-get update -qq
    apt_updated=1
  fi
  apt-get install -y -qq "$@" >/dev/null
}

# --- tools -------------------------------------------------------------------------------------------
if ! command -v python3 >/dev/null 2>&1; then
  echo "examples.sh: python3 missing: installing Debian's python3"
  apt_install python3 python3-venv
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "examples.sh: python3 cannot create a venv: installing Debian's python3-venv"
  apt_install python3-venv
fi
if ! command -v go >/dev/null 2>&1; then
  echo "examples.sh: go missing: installing Debian's golang-go (go.mod's toolchain follows)"
  apt_install golang-go
  export GOTOOLCHAIN=auto
fi
# Go fetches the toolchain go.mod names (GOTOOLCHAIN) from 1.21 on; an older go (Debian
# bookworm's is 1.19) cannot read go.mod's `go 1.26.0` line at all. Say so plainly.
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if ! [[ $go_minor =~ ^[0-9]+$ ]] || (( go_minor < 21 )); then
  echo "examples.sh: $(go version) is too old for examples/go (go.mod needs go 1.26.0, which Go 1.21 or newer fetches by itself): install Go 1.21 or newer (e.g. bookworm-backports' golang) and run again" >&2
  exit 1
fi
echo "examples.sh: $(python3 --version), $(go version), $(cargo --version 2>/dev/null || echo 'no cargo')"

# --- the examples against a live server ----------------------------------------------------------------
bash examples/run.sh "$@"
echo "examples.sh: done in $((SECONDS - start))s"
