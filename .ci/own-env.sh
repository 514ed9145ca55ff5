# shellcheck shell=bash
# Sourced by the load and bench scripts that start servers of their own: the shell's BLANGKO_*
# settings (a token file, a NIK key file, a metrics address, a database URL) are meant for the
# user's own server and client, and would make these servers refuse calls, write their key
# elsewhere or fail to bind. The scripts' servers and clients are their own, on loopback.
while IFS= read -r name; do
  unset "$name"
done < <(compgen -e | grep '^BLANGKO_' || true)
