#!/usr/bin/env bash
# The Python example: a venv with the pinned requirements (examples/python/.venv, created or
# updated only when requirements.txt changed), code generated from proto/ with grpcio-tools
# into examples/python/gen/ (every time, so a contract change shows up at once), then the
# agency flow against a running server.
#
#   examples/python/run.sh prepare   venv + code generation only
#   examples/python/run.sh           prepare, then run agency_example.py
#
# The example reads BLANGKO_TARGET, BLANGKO_AGENCY_TOKEN, BLANGKO_COUNTER_TOKEN, BLANGKO_OFFICE,
# BLANGKO_SERVICE_POINT and BLANGKO_COUNTER_ID (see agency_example.py). PYTHON picks the
# interpreter that creates the venv (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
gen="$here/gen"
python="${PYTHON:-python3}"

log() { echo "examples/python: $*"; }

# --- venv with the pinned requirements ---------------------------------------------------------
want="$(cat "$here/requirements.txt" | sha256sum | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version.split()[0])')"
have=""
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import sys' 2>/dev/null; then
  have="$(cat "$venv/.requirements-stamp" 2>/dev/null || true)"
else
  rm -rf "$venv"
fi
if [[ "$have" != "$want" ]]; then
  if [[ ! -x "$venv/bin/python" ]]; then
    log "creating the venv $venv with $("$python" --version)"
    "$python" -m venv "$venv"
  fi
  log "installing requirements.txt into the venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" > "$venv/.requirements-stamp"
fi

# --- code generation from proto/ ---------------------------------------------------------------
# grpc_tools.protoc adds the well-known types (google/protobuf/timestamp.proto) to the include path.
rm -rf "$gen"
mkdir -p "$gen"
"$venv/bin/python" -m grpc_tools.protoc \
  -I "$repo/proto" \
  --python_out="$gen" --pyi_out="$gen" --grpc_python_out="$gen" \
  "$repo"/proto/blangko/v1/*.proto
log "generated $(find "$gen" -name '*.py' | wc -l) modules into $gen ($("$venv/bin/python" -m grpc_tools.protoc --version))"

if [[ "${1:-}" == "prepare" ]]; then
  exit 0
fi

exec "$venv/bin/python" "$here/agency_example.py"
