# shellcheck shell=bash
# Sourced by the CI scripts: `apt_install PKG...` installs Debian packages (without recommends),
# through sudo when not root, with one `apt-get update` per script run.
apt_updated=""
apt_install() {
  local as_root=()
  [[ $(id -u) -eq 0 ]] || as_root=(sudo)
  if [[ -z "$apt_updated" ]]; then
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
