# shellcheck shell=bash
# Sourced by .ci/examples.sh, bench/ghz.sh and bench/stock-report.sh.
#
# `ensure_go` makes a Go of 1.21 or newer the first `go` on PATH. Go 1.21 and newer fetch the
# toolchain a go.mod names by themselves (GOTOOLCHAIN=auto, set here unless GOTOOLCHAIN is set:
# some distributions' go.env says `local`); an older Go (Debian bookworm's golang-go is 1.19)
# cannot even read examples/go's go.mod. When there is no such Go, the toolchain is fetched the
# way Go itself fetches one: the module golang.org/toolchain from the Go module proxy, its hash
# checked (pinned below for the default version; for another, the checksum database's line,
# read through the same proxy, which guards against a broken download only), unpacked once under
# ${XDG_CACHE_HOME:-~/.cache}/blangko/ and reused by later runs.
#
# `ensure_ghz` sets `ghz` to a ghz binary: $GHZ, one on PATH, or one installed with
# `go install github.com/bojand/ghz/cmd/ghz@v0.121.0` into ${XDG_CACHE_HOME:-~/.cache}/blangko/bin.
#
# Environment: BLANGKO_GO_VERSION (default: the `go` line of examples/go/go.mod), GOPROXY's first
# entry (default https://proxy.golang.org).

# shellcheck source=.ci/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

# The toolchain modules' hashes (h1:, Go's dirhash) for the default version, from
# sum.golang.org: a download must match them, whatever the proxy says.
declare -A GO_TOOLCHAIN_H1=(
  [v0.0.1-go1.26.0.linux-amd64]="h1:1p2G5COR51f8Q3EQ4HLJQDDL2ytLEqfL/yTawB0Jr8w="
  [v0.0.1-go1.26.0.linux-arm64]="h1:lAFrRm35hIzvRSMYiELtaPaitr22pp6iaBbdPBuJg2U="
)

go_minor_of() {
  # Empty (never an error under `set -e`) when this go cannot say its version.
  { "$1" env GOVERSION 2>/dev/null || true; } | sed -nE 's/^go1\.([0-9]+).*/\1/p'
}

ensure_go() {
  local have minor
  have=$(command -v go || true)
  if [[ -n "$have" ]]; then
    minor=$(go_minor_of "$have")
    if [[ $minor =~ ^[0-9]+$ ]] && ((minor >= 21)); then
      export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
      return 0
    fi
    echo "go.sh: $("$have" version) is older than 1.21" >&2
  else
    echo "go.sh: no go on PATH" >&2
  fi

  local go_mod
  go_mod="$(dirname "${BASH_SOURCE[0]}")/../examples/go/go.mod"
  local version=${BLANGKO_GO_VERSION:-$(sed -nE 's/^go ([0-9.]+)$/\1/p' "$go_mod" 2>/dev/null)}
  version=${version:-1.26.0}
  if ! [[ $version =~ ^1\.[0-9]+(\.[0-9]+)?$ ]]; then
    echo "go.sh: BLANGKO_GO_VERSION must look like 1.26.0, not '$version'" >&2
    return 1
  fi
  local goos goarch
  goos=$(uname -s | tr '[:upper:]' '[:lower:]')
  case "$(uname -m)" in
    x86_64 | amd64) goarch=amd64 ;;
    aarch64 | arm64) goarch=arm64 ;;
    *)
      echo "go.sh: no Go toolchain for $(uname -m) here; install Go 1.21 or newer" >&2
      return 1
      ;;
  esac
  local module_version="v0.0.1-go${version}.${goos}-${goarch}"
  local home="${XDG_CACHE_HOME:-$HOME/.cache}/blangko/go${version}.${goos}-${goarch}"
  if [[ ! -x "$home/bin/go" ]]; then
    local proxy=${GOPROXY:-https://proxy.golang.org}
    proxy=${proxy%%[,|]*}
    if [[ ! $proxy =~ ^https?:// ]]; then
      proxy=https://proxy.golang.org
    fi
    echo "go.sh: fetching golang.org/toolchain@$module_version from $proxy" >&2
    if ! command -v curl >/dev/null 2>&1; then
      apt_install curl ca-certificates
    fi
    local tmp
    tmp=$(mktemp -d)
    # Bounded: no download may hang a CI run (the toolchain is about 70 MB).
    if ! curl -fsSL --retry 3 --connect-timeout 20 --max-time 600 \
      -o "$tmp/go.zip" "$proxy/golang.org/toolchain/@v/$module_version.zip" ||
      ! curl -fsSL --retry 3 --connect-timeout 20 --max-time 60 \
        -o "$tmp/lookup" "$proxy/sumdb/sum.golang.org/lookup/golang.org/toolchain@$module_version"; then
      rm -rf "$tmp"
      echo "go.sh: could not download golang.org/toolchain@$module_version from $proxy" >&2
      return 1
    fi
    mkdir -p "$(dirname "$home")"
    # The zip's hash in Go's own form (h1: the dirhash of its files) must match the checksum
    # database's line; then the files are unpacked with their modes (bin/go is executable).
    if ! python3 - "$tmp/go.zip" "$tmp/lookup" "$module_version" "$tmp/unpacked" \
      "${GO_TOOLCHAIN_H1[$module_version]:-}" <<'PY'; then
import base64, hashlib, os, sys, zipfile
zip_path, lookup_path, version, dest, pinned = sys.argv[1:6]
prefix = f"golang.org/toolchain@{version}/"
want = None
with open(lookup_path) as f:
    for line in f:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "golang.org/toolchain" and parts[1] == version:
            want = parts[2]
if want is None:
    sys.exit(f"go.sh: the checksum database has no line for golang.org/toolchain {version}")
if pinned and want != pinned:
    sys.exit(f"go.sh: the proxy's checksum line for {version} ({want}) is not the pinned {pinned}")
with zipfile.ZipFile(zip_path) as z:
    names = sorted(i.filename for i in z.infolist() if not i.is_dir())
    summary = "".join(f"{hashlib.sha256(z.read(n)).hexdigest()}  {n}\n" for n in names)
    got = "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()
    if got != want:
        sys.exit(f"go.sh: golang.org/toolchain {version}: hash {got}, the checksum database says {want}")
    for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        rel = info.filename[len(prefix):]
        if rel.startswith("/") or ".." in rel.split("/"):
            sys.exit(f"go.sh: unsafe path in the toolchain zip: {info.filename}")
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        os.chmod(target, mode or 0o644)
PY
      rm -rf "$tmp"
      return 1
    fi
    # Go's own toolchain switch sets these executable whatever the zip says: so do we.
    chmod -R a+x "$tmp/unpacked/bin" "$tmp/unpacked/pkg/tool"
    rm -rf "$home"
    mv "$tmp/unpacked" "$home"
    rm -rf "$tmp"
  fi
  local fetched
  if ! fetched=$("$home/bin/go" version); then
    echo "go.sh: $home/bin/go does not run; remove $home and try again" >&2
    return 1
  fi
  export PATH="$home/bin:$PATH"
  # By default the fetched Go is go.mod's own version, so nothing more is fetched; an older
  # BLANGKO_GO_VERSION still fetches the toolchain go.mod names.
  export GOTOOLCHAIN=auto
  echo "go.sh: using $fetched from $home" >&2
}

ensure_ghz() {
  ghz=${GHZ:-$(command -v ghz || true)}
  if [[ -n "$ghz" ]]; then
    [[ -x "$ghz" ]] || {
      echo "go.sh: GHZ=$ghz is not an executable" >&2
      return 1
    }
    return 0
  fi
  local bin="${XDG_CACHE_HOME:-$HOME/.cache}/blangko/bin"
  ghz="$bin/ghz"
  if [[ ! -x "$ghz" ]]; then
    ensure_go
    echo "installing ghz v0.121.0 with go install (into $bin)"
    mkdir -p "$bin"
    GOBIN="$bin" go install github.com/bojand/ghz/cmd/ghz@v0.121.0
  fi
}
