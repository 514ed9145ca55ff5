#!/usr/bin/env bash
# CI step: the example clients in other languages (examples/python, examples/go), run against a
# live server by examples/run.sh. Installs what is missing, from the package registries only:
#   - Python's venv module (Debian's python3-venv) when the interpreter lacks it;
#   - Go, when there is none of 1.21 or newer: the toolchain module from the Go module proxy,
#     checked against the checksum database (.ci/go.sh);
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

# shellcheck source=.ci/apt.sh
source .ci/apt.sh

# --- tools -------------------------------------------------------------------------------------------
if ! command -v python3 >/dev/null 2>&1; then
  echo "examples.sh: python3 missing: installing Debian's python3"
  apt_install python3 python3-venv
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "examples.sh: python3 cannot create a venv: installing Debian's python3-venv"
  apt_install python3-venv
fi
# Go 1.21 or newer (it fetches the toolchain go.mod names by itself); without one, .ci/go.sh
# fetches Go from the Go module proxy.
# shellcheck source=.ci/go.sh
source .ci/go.sh
ensure_go
echo "examples.sh: $(python3 --version), $(go version), $(cargo --version 2>/dev/null || echo 'no cargo')"

# --- the examples against a live server ----------------------------------------------------------------
bash examples/run.sh "$@"
echo "examples.sh: done in $((SECONDS - start))s"
