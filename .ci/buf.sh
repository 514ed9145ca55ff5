#!/usr/bin/env bash
# Protobuf contract checks for proto/blangko/v1/*.proto, configured by buf.yaml at the repo root:
#   1. installs the pinned buf CLI (npm package @bufbuild/buf) into .ci/tools if it is not there;
#   2. buf lint      (STANDARD rules);
#   3. buf breaking  (FILE rules) against every commit that changed proto/blangko (and against
#      $BUF_AGAINST_REF too, when set: a ref outside this history, say another branch's release).
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

# --- 3. breaking-change check against every earlier version of the contract -----------------
# CI runs once for a whole submission, which may hold several commits: a check against HEAD~1
# alone would miss a field removed or renumbered in any commit but the last. So the contract is
# checked against each commit that changed proto/blangko (the first one is the published v1);
# any other commit holds the same protos as one of those. A shallow clone lacks the history: the
# check is skipped with a note.
if [[ "$(git rev-parse --is-shallow-repository)" == "true" ]]; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "buf.sh: a shallow clone lacks the contract's history, and CI must check it: clone in full" >&2
    exit 1
  fi
  echo "buf.sh: NOTE: shallow clone, the contract's history is not available: buf breaking skipped"
  exit 0
fi
mapfile -t versions < <(git log --format=%H -- proto/blangko)
if [[ -n "${BUF_AGAINST_REF:-}" ]]; then
  versions+=("$(git rev-parse --verify "${BUF_AGAINST_REF}^{commit}")")
fi
if [[ ${#versions[@]} -eq 0 ]]; then
  echo "buf.sh: NOTE: no commit has proto/blangko yet: buf breaking skipped"
  exit 0
fi

failed=()
for commit in "${versions[@]}"; do
  short="$(git rev-parse --short "$commit")"
  # buf clones the repository to read the commit: deep enough to reach it.
  depth=$(($(git rev-list --count "${commit}..HEAD") + 1))
  against_args=(--against ".git#ref=${commit},depth=${depth}")
  # A commit without buf.yaml would be read as one module rooted at the repository root, so its
  # imports ("blangko/v1/common.proto") would not resolve: read it with today's buf.yaml.
  if ! git cat-file -e "${commit}:buf.yaml" 2>/dev/null; then
    against_args+=(--against-config buf.yaml)
  fi
  if "$buf" breaking "${against_args[@]}"; then
    echo "buf.sh: buf breaking against $short OK"
  else
    echo "buf.sh: buf breaking against $short FAILED (see above)" >&2
    failed+=("$short")
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "buf.sh: FAILED: breaking change(s) to the protobuf contract since ${failed[*]}." >&2
  echo "buf.sh: blangko.v1 is a published contract: add new fields/RPCs instead, and 'reserved' removed ones." >&2
  exit 1
fi
echo "buf.sh: buf breaking OK (no breaking change against any of the ${#versions[@]} earlier versions of the contract)"
