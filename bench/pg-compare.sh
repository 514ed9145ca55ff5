#!/usr/bin/env bash
# Reserve throughput of two blangko-server replicas over one PostgreSQL, against pgbench running
# the naive per-request transaction (one conditional UPDATE of the hot quota row + one INSERT)
# on the same database at the same concurrency, in the same run.
#
# Usage: bench/pg-compare.sh POSTGRES_URL [SECONDS] [CONCURRENCY] [BATCH_SIZE]
#   POSTGRES_URL  a database the script may fill (e.g. postgres://bench:bench@127.0.0.1/bench);
#                 "-" takes it from BLANGKO_DATABASE_URL, so that its password is on no command
#                 line. The script itself passes the password on through the environment only
#                 (BLANGKO_DATABASE_URL for the replicas, PGPASSWORD for psql and pgbench).
# Environment: NIK_KEY_FILE, the key the replicas hash NIKs with (default
# ~/.cache/blangko/pg-compare.nikkey, created on the first run). The database remembers the key
# it was first used with and the servers refuse another, so every run on one database needs the
# same key file. SERVER, the blangko-server binary of the replicas (default
# target/release/blangko-server), to compare builds on one database.
# Builds the release binaries first. Talks to 127.0.0.1 only; every loop is bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
url=${1:?usage: bench/pg-compare.sh POSTGRES_URL|- [SECONDS] [CONCURRENCY] [BATCH_SIZE]}
if [[ $url == - ]]; then
  url=${BLANGKO_DATABASE_URL:?"'-' takes the URL from BLANGKO_DATABASE_URL, which is not set"}
fi
# psql and pgbench get the URL without its password, and the password as PGPASSWORD when the
# URL has one (else PGPASSWORD and ~/.pgpass work as usual). The URL goes to python on stdin: on
# no command line. Only ":password" is cut out of the text, so every other form (a Unix socket's
# postgresql:///db?host=/run/postgresql, say) reaches libpq as given.
split=$(python3 -c '
import re, sys, urllib.parse
url = sys.stdin.read().strip()
m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*):([^@/?#]*)@(.*)$", url, re.S)
if m:
    print(urllib.parse.unquote(m.group(2)))
    print(f"{m.group(1)}@{m.group(3)}")
else:
    print()
    print(url)
' <<<"$url")
url_password=${split%%$'\n'*}
libpq_url=${split#*$'\n'}
if [[ -n $url_password ]]; then
  export PGPASSWORD=$url_password
fi
seconds=${2:-5}
concurrency=${3:-64}
batch=${4:-128}
command -v pgbench >/dev/null || PATH="$PATH:$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)"

cargo build --release --locked -q -p blangko-server -p blangko-bench
server=${SERVER:-target/release/blangko-server}
[[ -x "$server" ]] || { echo "SERVER=$server is not an executable"; exit 2; }
work=$(mktemp -d)
# shellcheck source=.ci/stop.sh
source .ci/stop.sh
# shellcheck disable=SC2046 # one pid per word
trap 'stop_pids $(jobs -p); rm -rf "$work"' EXIT
key=${NIK_KEY_FILE:-$HOME/.cache/blangko/pg-compare.nikkey}
if [[ ! -s "$key" ]]; then
  mkdir -p "$(dirname "$key")"
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$key")
fi
# The first NIK serial of this run, and past the most this run can use (100,000 a second).
counter="$key.next-nik"
offset=$(cat "$counter" 2>/dev/null || echo 0)
[[ $offset =~ ^[0-9]+$ ]] || offset=0
echo $((offset + ${seconds%.*} * 100000 + 100000)) > "$counter"

# Two replicas on free ports (port 0: each prints the address it chose).
for r in a b; do
  BLANGKO_DATABASE_URL="$url" "$server" --listen 127.0.0.1:0 --nik-key-file "$key" \
    --log warn --reserve-batch-size "$batch" > "$work/$r.out" 2> "$work/$r.err" &
done
for r in a b; do
  for _ in $(seq 1 100); do grep -q listening "$work/$r.out" 2>/dev/null && break; sleep 0.1; done
done
a=$(awk '/listening/ {print $NF}' "$work/a.out")
b=$(awk '/listening/ {print $NF}' "$work/b.out")
if [[ -z "$a" || -z "$b" ]]; then
  cat "$work/a.err" "$work/b.err"
  echo "a replica did not start (NIK_KEY_FILE: $key)"
  exit 1
fi
echo "replicas: $a $b (reserve batch size $batch)"

echo "--- blangko: Reserve over two replicas, one office (hot quota rows), concurrency $concurrency"
# One hot quota row at the largest daily quota (100,000). Runs of the same day on the same
# database share it: at 4,000-11,000 Reserves a second, two to five 5 s runs use it up, and then
# Reserves are referred to IKD instead (a cheaper answer). The figure would not compare with
# pgbench's, so the script says so and fails: recreate the database, or wait for the next day.
# Each run takes NIKs past the previous run's (a counter beside the key file), since a NIK
# reserved earlier the same day would be answered with that reservation.
target/release/blangko-bench --server "http://$a" --server "http://$b" --offices 1 --service-points 1 \
  --concurrency "$concurrency" --seconds "$seconds" --phases reserve \
  --nik-offset "$offset" | tee "$work/bench.txt"
if ! grep -q 'referred 0$' "$work/bench.txt"; then
  echo "some Reserves were referred to IKD (today's quota row of 3201/sp0 was used up): the figure is not comparable; use a fresh database"
  exit 1
fi

echo "--- pgbench: the naive transaction on the same database, $concurrency clients"
psql -q "$libpq_url" <<'SQL'
DROP TABLE IF EXISTS pgbench_quota_day, pgbench_reservation;
CREATE TABLE pgbench_quota_day (service_point_id TEXT, day DATE, used BIGINT, quota BIGINT, PRIMARY KEY (service_point_id, day));
CREATE TABLE pgbench_reservation (id BIGSERIAL PRIMARY KEY, nik_hash TEXT, day DATE);
INSERT INTO pgbench_quota_day VALUES ('BENCH', CURRENT_DATE, 0, 1000000000);
SQL
cat > "$work/naive.sql" <<'SQL'
\set n random(1, 1000000000)
BEGIN;
UPDATE pgbench_quota_day SET used = used + 1 WHERE service_point_id = 'BENCH' AND day = CURRENT_DATE AND used < quota;
INSERT INTO pgbench_reservation(nik_hash, day) VALUES (md5(:n::text), CURRENT_DATE);
END;
SQL
pgbench -n -c "$concurrency" -j 2 -T "$seconds" -f "$work/naive.sql" "$libpq_url" | grep -E "tps|latency average"
psql -q "$libpq_url" -c "DROP TABLE pgbench_quota_day, pgbench_reservation"
