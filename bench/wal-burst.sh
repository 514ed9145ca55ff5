#!/usr/bin/env bash
# A long burst of Reserve on one SQLite server, with the size of its write-ahead log sampled
# every 100 ms: how large the WAL grows under load (the writer checkpoints inline at 64 MiB, a
# slow COMMIT that every Reserve of that batch waits for), beside the burst's throughput and
# latency.
#
# Usage: bench/wal-burst.sh [SECONDS] [RUNS]
#   (defaults: 30 seconds, 1 run; each run on a fresh database file)
# Environment: SERVER (the blangko-server binary; default target/release/blangko-server, built
# from this source unless given), BENCH (the blangko-bench binary; likewise), SERVICE_POINTS (default 16),
# CONCURRENCY (default 64).
#
# Prints blangko-bench's Reserve line and the WAL's peak size for each run. Fails when
# blangko-bench reports an unexpected status or a broken quota invariant; never on a timing.
# Loopback only; every run is bounded by SECONDS, and the server is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-30}
runs=${2:-1}
service_points=${SERVICE_POINTS:-16}
concurrency=${CONCURRENCY:-64}
server=${SERVER:-target/release/blangko-server}
bench=${BENCH:-target/release/blangko-bench}

# The binaries not given are built (nothing to do when they are current), never an old build.
if [[ -z "${SERVER:-}" || -z "${BENCH:-}" ]]; then
  cargo build --release --locked -q -p blangko-server -p blangko-bench
fi
for binary in "$server" "$bench"; do
  [[ -x "$binary" ]] || { echo "$binary is not an executable" >&2; exit 1; }
done

work=$(mktemp -d)
# shellcheck source=.ci/stop.sh
source .ci/stop.sh
# shellcheck source=.ci/own-env.sh
source .ci/own-env.sh
# shellcheck disable=SC2046 # one pid per word
trap 'stop_pids $(jobs -p); rm -rf "$work"' EXIT

for run in $(seq 1 "$runs"); do
  db="$work/run$run.db"
  rm -f "$work/server.out" "$work/server.err"
  "$server" --listen 127.0.0.1:0 --database "sqlite:$db" --log warn \
    > "$work/server.out" 2> "$work/server.err" &
  server_pid=$!
  for _ in $(seq 1 100); do grep -q listening "$work/server.out" 2>/dev/null && break; sleep 0.1; done
  addr=$(awk '/listening/ {print $NF}' "$work/server.out")
  [[ -n "$addr" ]] || { cat "$work/server.err"; exit 1; }

  # Sampled until the burst ends, and never longer than the burst plus a minute.
  (
    for _ in $(seq 1 $((seconds * 10 + 600))); do
      stat -c %s "$db-wal" 2> /dev/null || echo 0
      sleep 0.1
    done
  ) > "$work/wal-sizes" &
  sampler=$!

  out=$("$bench" --server "http://$addr" --seconds "$seconds" --concurrency "$concurrency" \
    --service-points "$service_points" --phases reserve --server-pid "$server_pid" 2>&1) || {
    echo "$out" >&2
    exit 1
  }
  stop_pids "$sampler" "$server_pid"
  grep -q "invariant held" <<< "$out" || { echo "$out" >&2; exit 1; }

  peak=$(sort -n "$work/wal-sizes" | tail -1)
  echo "run $run of $runs, $seconds s, $concurrency in flight, $service_points service points"
  grep -E '^reserve|peak RSS' <<< "$out" || { echo "$out" >&2; exit 1; }
  awk -v b="$peak" 'BEGIN { printf "WAL peak %.1f MiB\n", b / 1048576 }'
  rm -f "$db" "$db-wal" "$db-shm" "$db.nikkey"
done
