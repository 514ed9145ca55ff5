#!/usr/bin/env bash
# The Go example: protoc-gen-go and protoc-gen-go-grpc installed at pinned versions into
# examples/go/.bin (only when missing or of another version), code generated from proto/ into
# examples/go/gen/ (every time, so a contract change breaks the build at once), the commands
# built, then the agency flow against a running server.
#
#   examples/go/run.sh prepare   plugins + code generation + build only
#   examples/go/run.sh           prepare, then run agency-example
#
# protoc: $PROTOC when set (a protoc 3.15 or newer that finds the well-known types on its include
# path), else the one bundled in grpcio-tools from the Python example's venv (created by
# examples/python/run.sh prepare when missing).
# The example reads BLANGKO_TARGET, BLANGKO_AGENCY_TOKEN, BLANGKO_COUNTER_TOKEN, BLANGKO_OFFICE,
# BLANGKO_SERVICE_POINT and BLANGKO_COUNTER_ID (see cmd/agency-example/main.go).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="$here/.bin"
cd "$here"

# protoc-gen-go comes from the same module as the protobuf runtime, so it is kept at the version
# go.mod requires; protoc-gen-go-grpc is its own module (needs grpc-go 1.64 or newer at run time).
PROTOC_GEN_GO_VERSION="$(awk '$1 == "google.golang.org/protobuf" { print $2 }' go.mod)"
PROTOC_GEN_GO_GRPC_VERSION="v1.6.2"

log() { echo "examples/go: $*"; }

# --- plugins -------------------------------------------------------------------------------------
mkdir -p "$bin"
if [[ "$("$bin/protoc-gen-go" --version 2>/dev/null || true)" != "protoc-gen-go $PROTOC_GEN_GO_VERSION" ]]; then
  log "installing protoc-gen-go@$PROTOC_GEN_GO_VERSION into $bin"
  GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
if [[ "$("$bin/protoc-gen-go-grpc" --version 2>/dev/null || true)" != "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" ]]; then
  log "installing protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION into $bin"
  GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

# --- protoc --------------------------------------------------------------------------------------
if [[ -n "${PROTOC:-}" ]]; then
  protoc=("$PROTOC")
else
  venv_python="$repo/examples/python/.venv/bin/python"
  if ! "$venv_python" -c 'import grpc_tools' 2>/dev/null; then
    log "no grpcio-tools yet: preparing the Python example's venv"
    bash "$repo/examples/python/run.sh" prepare
  fi
  protoc=("$venv_python" -m grpc_tools.protoc)
fi

# --- code generation from proto/ -----------------------------------------------------------------
# The protos' go_package is "blangko/gen/go/blangko/v1"; this module is "blangko", so with
# module=blangko the code lands in ./gen/go/blangko/v1 and imports as blangko/gen/go/blangko/v1.
rm -rf gen
"${protoc[@]}" \
  -I "$repo/proto" \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
  --go_out=. --go_opt=module=blangko \
  --go-grpc_out=. --go-grpc_opt=module=blangko \
  "$repo"/proto/blangko/v1/*.proto
log "generated $(find gen -name '*.go' | wc -l) files into $here/gen ($("${protoc[@]}" --version), $("$bin/protoc-gen-go" --version), $("$bin/protoc-gen-go-grpc" --version))"

# --- build (go.mod and go.sum must already be complete: -mod=readonly) ---------------------------
go vet -mod=readonly ./...
go build -mod=readonly -o "$bin/" ./cmd/...
log "built $bin/agency-example and $bin/wait-healthy"

if [[ "${1:-}" == "prepare" ]]; then
  exit 0
fi

exec "$bin/agency-example"
