#!/usr/bin/env bash
# Instructions per call of blangko-server, counted by valgrind's callgrind: a figure that does not
# move with the noise of a shared machine (wall-clock throughput here moves by 10-15% from one
# minute to the next), for comparing two builds of the server.
#
# Usage: bench/instructions.sh [SECONDS] [ROUNDS] [PHASES]
#   (defaults: 3 seconds per phase, 2 rounds, phases health,quota,reserve)
# Environment: SERVER (the blangko-server binary; default target/release/blangko-server, built
# from this source unless given), SERVER_ARGS (more flags for the server, e.g. `--reserve-journal-max 0`), BENCH (the blangko-bench binary; likewise), COUNTER (the blangko-counter binary; likewise), SERVICE_POINTS (default 16),
# CONCURRENCY (default 64), TOP (functions of the Reserve profile to list; default 0), PROFILE
# (a path: the last round's longer Reserve profile is copied there, for callgrind_annotate or
# kcachegrind).
#
# The server runs under callgrind on a fresh SQLite file, with instrumentation off until a
# phase starts. After one warm-up run of every phase, each round measures each phase alone,
# twice: counters zeroed, instrumentation on, blangko-bench for SECONDS (then for twice as
# long), instrumentation off, counters dumped. Both runs pay the same set-up, connections and
# invariant check, so instructions per call = the difference of the two totals / the difference
# of the calls blangko-bench counted. Every run uses NIKs of its own (--nik-offset), so every
# Reserve makes a new reservation.
#
# What it counts and what it does not:
# - user-space instructions of the whole server process (every thread: gRPC, the Reserve batch
#   worker, SQLite, the checkpoint), not the kernel's (writes, fsyncs, the network);
# - valgrind hides the CPU's SHA extensions, so SHA-256 (the NIK's HMAC, the ledger chain) runs
#   the portable code and weighs more than natively;
# - the server runs about 50 times slower under valgrind, so Reserve batches are larger than
#   in a native run; compare builds with the same SECONDS and CONCURRENCY.
# Loopback only; every run is bounded by SECONDS, and the server is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-3}
rounds=${2:-2}
phases=${3:-health,quota,reserve}
service_points=${SERVICE_POINTS:-16}
concurrency=${CONCURRENCY:-64}
top=${TOP:-0}
server=${SERVER:-target/release/blangko-server}
bench=${BENCH:-target/release/blangko-bench}
counter=${COUNTER:-target/release/blangko-counter}

command -v valgrind > /dev/null || {
  echo "valgrind is missing (Debian: apt-get install valgrind)" >&2
  exit 1
}
# The binaries not given are built (nothing to do when they are current): an old build left in
# target/ would otherwise be measured as if it were this source.
if [[ -z "${SERVER:-}" || -z "${BENCH:-}" || -z "${COUNTER:-}" ]]; then
  cargo build --release --locked -q -p blangko-server -p blangko-bench -p blangko-counter
fi
for binary in "$server" "$bench" "$counter"; do
  [[ -x "$binary" ]] || { echo "$binary is not an executable" >&2; exit 1; }
done

work=$(mktemp -d)
# shellcheck source=.ci/stop.sh
source .ci/stop.sh
# shellcheck source=.ci/own-env.sh
source .ci/own-env.sh
# shellcheck disable=SC2046 # one pid per word
trap 'stop_pids $(jobs -p); rm -rf "$work"' EXIT
# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
  "$server" --listen 127.0.0.1:0 --database "sqlite:$work/bench.db" --log warn \
  ${SERVER_ARGS:-} \
  > "$work/server.out" 2> "$work/server.err" &
# valgrind execs its tool in place: the job's pid is the server's under callgrind.
pid=$!
# Under valgrind the server takes a few seconds to start.
for _ in $(seq 1 300); do grep -q listening "$work/server.out" 2>/dev/null && break; sleep 0.1; done
addr=$(awk '/listening/ {print $NF}' "$work/server.out")
[[ -n "$addr" ]] || { cat "$work/server.err"; exit 1; }
echo "server under callgrind: $addr (pid $pid); $seconds s per phase, $concurrency in flight, $service_points service points"

# Folds what the Reserve journal holds (SQLite's Reserve batches of a burst leave their rows there
# until the office pauses), so that each measured run pays for the rows it left: a listing of a
# counter's holds folds the journal first (a metrics scrape no longer does), and this counter has
# none. Without it the rows a run leaves were folded during the next run's set-up, and the
# figures came out negative.
fold_journal() {
  timeout 600 "$counter" --server "http://$addr" --office 3201 --service-point sp0 \
    --counter instructions-fold holds > /dev/null
}

# One run of blangko-bench; prints its output, fails on an error or a broken invariant.
run_bench() {
  local phase=$1 secs=$2 offset=$3 out
  out=$("$bench" --server "http://$addr" --seconds "$secs" --concurrency "$concurrency" \
    --service-points "$service_points" --phases "$phase" --nik-offset "$offset" 2>&1) || {
    echo "$out" >&2
    return 1
  }
  grep -q "invariant held" <<< "$out" || { echo "$out" >&2; return 1; }
  echo "$out"
}

# One instrumented run of one phase: sets $calls (the phase's calls), $total (the server's
# instructions over the whole run) and $file (its profile).
dump=0
measure() {
  local phase=$1 secs=$2 offset=$3 out
  callgrind_control -z "$pid" &> /dev/null
  callgrind_control -i on "$pid" &> /dev/null
  out=$(run_bench "$phase" "$secs" "$offset")
  fold_journal
  callgrind_control -i off "$pid" &> /dev/null
  dump=$((dump + 1))
  callgrind_control -d "$phase-$dump" "$pid" &> /dev/null
  file="$work/callgrind.out.$dump"
  for _ in $(seq 1 100); do [[ -s "$file" ]] && break; sleep 0.1; done
  calls=$(awk -v p="$phase" '$1 == p { for (i = 1; i <= NF; i++) if ($i == "ok") print $(i + 1) }' <<< "$out")
  total=$(callgrind_annotate "$file" 2> /dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  [[ -n "$calls" && "$calls" -gt 0 && -n "$total" ]] || { echo "no figures for $phase: $out" >&2; exit 1; }
}

# Warm-up: connections, statement caches, the first quota rows of the day.
run_bench "$phases" "$seconds" 0 > /dev/null
fold_journal

# Each run also sets up the bench offices, connects and checks the invariant at the end. A run
# of SECONDS and one of twice as long do that alike, so the instructions per call are the
# difference between the two runs over the difference in calls.
declare -A sum_per_call
printf '%-8s %5s %11s %11s %12s\n' phase round "calls (1x)" "calls (2x)" "per call"
for round in $(seq 1 "$rounds"); do
  for phase in ${phases//,/ }; do
    measure "$phase" "$seconds" $((round * 10000000))
    short_calls=$calls short_total=$total
    measure "$phase" "$(awk -v s="$seconds" 'BEGIN { print 2 * s }')" $((round * 10000000 + 5000000))
    (( calls > short_calls )) || { echo "$phase: the longer run made no more calls" >&2; exit 1; }
    per_call=$(( (total - short_total) / (calls - short_calls) ))
    sum_per_call[$phase]=$(( ${sum_per_call[$phase]:-0} + per_call ))
    printf '%-8s %5d %11d %11d %12d\n' "$phase" "$round" "$short_calls" "$calls" "$per_call"
    if [[ "$phase" == reserve && -n "${PROFILE:-}" && "$round" == "$rounds" ]]; then
      cp "$file" "$PROFILE"
    fi
    if [[ "$phase" == reserve && "$top" -gt 0 && "$round" == "$rounds" ]]; then
      callgrind_annotate --inclusive=yes "$file" > "$work/annotated.txt" 2> /dev/null
      grep -E 'blangko_server::|sqlite3_step|walFrames|h2::proto::connection' "$work/annotated.txt" \
        | head -n "$top" | cut -c1-160 > "$work/top.txt" || true
    fi
  done
done

echo "mean instructions per call over $rounds round(s):"
for phase in ${phases//,/ }; do
  printf '  %-8s %12d\n' "$phase" $(( sum_per_call[$phase] / rounds ))
done
if [[ -n "${sum_per_call[health]:-}" && -n "${sum_per_call[reserve]:-}" ]]; then
  awk -v r="${sum_per_call[reserve]}" -v h="${sum_per_call[health]}" \
    'BEGIN { printf "  reserve/health instructions: %.2f\n", r / h }'
fi
if [[ -s "$work/top.txt" ]]; then
  echo "Reserve, inclusive instructions of the last round (first $top matching lines):"
  cat "$work/top.txt"
fi
