#!/usr/bin/env bash
# Protobuf contract checks for proto/blangko/v1/*.proto, configured by buf.yaml at the repo root:
#   1. installs the pinned buf CLI (npm package @bufbuild/buf) into .ci/tools if it is not there;
#   2. buf lint      (STANDARD rules);
#   3. buf breaking  (FILE rules) against the previous commit (HEAD~1, or $BUF_AGAINST_REF).
# Usable on its own: `bash .ci/buf.sh` from anywhere inside the repository.
set -euo pipefail

# The exact buf version; bump deliberately (check with `npm view @bufbuild/buf version`).
BUF_VERSION="1.75.0"

repo_root="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
cd "$repo_root"

tools_dir=".ci/tools"
buf="$tools_dir/node_modules/.bin/buf"

# --- 1. install the pinned buf ------------------------------------------------------------
installed_version=""
if [[ -x "$buf" ]]; then
  installed_version="$("$buf" --version 2>/dev/null || true)"
fi
if [[ "$installed_version" != "$BUF_VERSION" ]]; then
  echo "buf.sh: installing @bufbuild/buf@$BUF_VERSION into $tools_dir (found: ${installed_version:-none})"
  npm install --prefix "$tools_dir" --no-audit --no-fund "@bufbuild/buf@$BUF_VERSION"
  installed_version="$("$buf" --version)"
  if [[ "$installed_version" != "$BUF_VERSION" ]]; then
    echo "buf.sh: ERROR: expected buf $BUF_VERSION after install, got '$installed_version'" >&2
    exit 1
  fi
fi
echo "buf.sh: buf $installed_version"

# Plain text output in logs (no ANSI colours).
export BUF_LOG_FORMAT=text

# --- 2. lint ------------------------------------------------------------------------------
echo "buf.sh: buf lint"
if ! "$buf" lint; then
  echo "buf.sh: FAILED: buf lint found the problems above" >&2
  exit 1
fi
echo "buf.sh: buf lint OK"

# --- 3. breaking-change check against the previous commit ---------------------------------
# The previous commit must exist (a one-commit or shallow clone has none) and must have the
# protos; otherwise there is nothing to compare against and the check is skipped with a note.
against_ref="${BUF_AGAINST_REF:-HEAD~1}"
if ! git rev-parse --verify --quiet "${against_ref}^{commit}" >/dev/null; then
  if [[ "$(git rev-parse --is-shallow-repository)" == "true" ]]; then
    echo "buf.sh: NOTE: shallow clone, $against_ref is not available: buf breaking skipped"
  else
    echo "buf.sh: NOTE: no commit $against_ref (only one commit?): buf breaking skipped"
  fi
  exit 0
fi
if ! git cat-file -e "${against_ref}:proto/blangko" 2>/dev/null; then
  echo "buf.sh: NOTE: $against_ref has no proto/blangko directory: buf breaking skipped"
  exit 0
fi

against_short="$(git rev-parse --short "${against_ref}^{commit}")"
against_args=(--against ".git#ref=${against_ref}")
# A previous commit without buf.yaml would be read as one module rooted at the repository root,
# so its imports ("blangko/v1/common.proto") would not resolve: read it with today's buf.yaml.
if ! git cat-file -e "${against_ref}:buf.yaml" 2>/dev/null; then
  against_args+=(--against-config buf.yaml)
fi

echo "buf.sh: buf breaking ${against_args[*]} ($against_ref = $against_short)"
if ! "$buf" breaking "${against_args[@]}"; then
  echo "buf.sh: FAILED: breaking change(s) to the protobuf contract since $against_short (see above)." >&2
  echo "buf.sh: blangko.v1 is a published contract: add new fields/RPCs instead, and 'reserved' removed ones." >&2
  exit 1
fi
echo "buf.sh: buf breaking OK (no breaking change since $against_short)"
