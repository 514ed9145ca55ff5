# shellcheck shell=bash
# Sourced by the CI scripts: `apt_install PKG...` installs Debian packages (without recommends),
# through sudo when not root, with one `apt-get update` per script run.
# `as_root CMD...` runs a command as root (through sudo when not root).
apt_updated=""
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  else
    sudo "$@"
  fi
}
apt_install() {
  if [[ -z "$apt_updated" ]]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
