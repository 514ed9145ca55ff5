#!/usr/bin/env bash
# ghz load scenarios against a blangko-server started here on a fresh SQLite file.
#
# Usage: bench/ghz.sh [CALLS] [CONCURRENCY]      (defaults: 5000 calls per scenario, 64 in flight)
# Environment: GHZ (path to ghz; installed with `go install` when missing, and Go itself fetched
# from the Go module proxy when there is no Go 1.21 or newer, see .ci/go.sh), OUT (directory for
# ghz's JSON reports; default bench/out). The script's own server needs no token.
#
# Scenarios, each by reflection AND by proto file (proto/ for the contract, bench/proto/ for the
# standard grpc.health.v1 file):
#   health   grpc.health.v1.Health/Check
#   quota    blangko.v1.CounterService/GetQuota
#   reserve  blangko.v1.CounterService/Reserve, every call a distinct NIK and request_id (the
#            reflection run and the proto run use NIKs of different birth months, so both make
#            new reservations)
# ghz exits 0 even when calls fail, so this script reads each JSON report and fails on any status
# other than OK. Afterwards no service point may hold more than its quota, and the office must
# hold exactly as many reservations as the two Reserve scenarios made calls: an OK answer that
# replayed an earlier reservation, or one that was lost, fails the script. (A run across the
# office's midnight, Asia/Jakarta, splits them over two days: then only the quota is checked.)
# Loopback only; every run is bounded by a call count (-n), so no call is cut off mid-flight by a
# duration limit (ghz reports such calls as errors).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
calls=${1:-5000}
concurrency=${2:-64}
# Distinct NIKs per scenario: serial 0001-9999 times birth day 01-28.
max_calls=279972
if ! [[ $calls =~ ^[0-9]+$ ]] || (( calls < 1 || calls > max_calls )); then
  echo "CALLS must be 1..$max_calls (each Reserve needs a NIK of its own)"
  exit 2
fi
# ghz opens 4 connections below, and refuses fewer calls in flight than connections.
if ! [[ $concurrency =~ ^[0-9]+$ ]] || (( concurrency < 4 || concurrency > 10000 )); then
  echo "CONCURRENCY must be 4..10000 (ghz spreads the calls over 4 connections)"
  exit 2
fi
out=${OUT:-bench/out}
mkdir -p "$out"

# ghz: $GHZ, one on PATH, or installed with `go install` (and Go fetched when there is none of
# 1.21 or newer), see .ci/go.sh.
# shellcheck source=.ci/go.sh
source .ci/go.sh
ensure_ghz
"$ghz" --version

cargo build --release --locked -q -p blangko-server
work=$(mktemp -d)
# shellcheck source=.ci/stop.sh
source .ci/stop.sh
# shellcheck disable=SC2046 # one pid per word
trap 'stop_pids $(jobs -p); rm -rf "$work"' EXIT
# Without the shell's BLANGKO_* settings (a token file, a database URL, ...): this server is the
# script's own, on a fresh file, open to the calls below.
# shellcheck disable=SC2046 # one -u NAME pair per variable
env $(env | awk -F= '/^BLANGKO_/ {print "-u " $1}') \
  target/release/blangko-server --listen 127.0.0.1:0 --database "sqlite:$work/bench.db" --log warn \
  > "$work/server.out" 2> "$work/server.err" &
for _ in $(seq 1 100); do grep -q listening "$work/server.out" 2>/dev/null && break; sleep 0.1; done
addr=$(awk '/listening/ {print $NF}' "$work/server.out")
[[ -n "$addr" ]] || { cat "$work/server.err"; exit 1; }
echo "server: $addr"

# The server above has no token file (loopback), so no token is sent: a BLANGKO_TOKEN in the
# shell would otherwise be written into ghz's JSON reports (they keep the call's metadata).

# A bench office: 16 service points serving every day with a quota far above the load.
grpc_setup() {
  # ghz exits 0 even when the call fails: its one status must be OK.
  "$ghz" --insecure --call "$1" -d "$2" -n 1 -c 1 -O json -o "$work/setup.json" "$addr"
  python3 - "$work/setup.json" "$1" <<'PY'
import json, sys
codes = json.load(open(sys.argv[1])).get("statusCodeDistribution", {})
if codes != {"OK": 1}:
    sys.exit(f"set-up call {sys.argv[2]} failed: {codes}")
PY
}
grpc_setup blangko.v1.StockService/UpsertOffice \
  '{"request_id":"ghz-office-{{.UUID}}","office":{"office_id":"3201","name":"Bench","time_zone":"Asia/Jakarta","hold_ttl_secs":86400}}'
for sp in $(seq 0 15); do
  grpc_setup blangko.v1.StockService/UpsertServicePoint \
    "{\"request_id\":\"ghz-sp-$sp-{{.UUID}}\",\"service_point\":{\"office_id\":\"3201\",\"service_point_id\":\"sp$sp\",\"name\":\"Bench $sp\",\"kind\":\"SERVICE_POINT_KIND_OTHER\",\"service_days\":[1,2,3,4,5,6,7],\"policy\":{\"mode\":\"QUOTA_MODE_FIXED\",\"fixed_daily_quota\":100000}}}"
done
grpc_setup blangko.v1.StockService/RecordShipment \
  '{"request_id":"ghz-ship-{{.UUID}}","office_id":"3201","quantity":1000000,"reference":"GHZ-{{.UUID}}"}'

# Each Reserve: a distinct NIK from the request number (serial 0001-9999, birth day 01-28) and
# the scenario's birth month (MM, born in 1990), and a request_id of its own.
reserve_data() { # request-id prefix, birth month
  echo '{"request_id":"'"$1"'-{{.UUID}}","office_id":"3201","service_point_id":"sp{{mod .RequestNumber 16}}","counter_id":"ghz","nik":"320101{{printf `%02d` (add (mod (div .RequestNumber 9999) 28) 1)}}'"$2"'90{{printf `%04d` (add (mod .RequestNumber 9999) 1)}}","reason":"REASON_DATA_CHANGE","ikd_status":"IKD_STATUS_ACTIVE"}'
}

failures=0
run() { # name source(reflection|proto) call data
  local name=$1 source=$2 call=$3 data=$4
  local report="$out/$name-$source.json"
  local how=()
  # By proto file: ghz compiles the contract itself instead of asking the server.
  if [[ $source == proto && $call == grpc.health.* ]]; then
    how=(--import-paths bench/proto --proto grpc/health/v1/health.proto)
  elif [[ $source == proto ]]; then
    how=(--import-paths proto --proto blangko/v1/counter_service.proto)
  fi
  "$ghz" --insecure "${how[@]}" --call "$call" -d "$data" -n "$calls" -c "$concurrency" \
    --connections 4 -O json -o "$report" "$addr"
  python3 - "$report" "$name ($source)" <<'PY' || failures=$((failures + 1))
import json, sys
r = json.load(open(sys.argv[1]))
codes = r.get("statusCodeDistribution", {})
lat = {d["percentage"]: d["latency"] / 1e6 for d in r.get("latencyDistribution") or []}
print(f'{sys.argv[2]:<20} {r["rps"]:>9.0f} calls/s  p50 {lat.get(50, 0):.2f} ms  p99 {lat.get(99, 0):.2f} ms  statuses {codes}')
bad = {k: v for k, v in codes.items() if k != "OK"}
if bad or not codes:
    print(f"  UNEXPECTED statuses: {bad or 'no calls'}")
    sys.exit(1)
PY
}
run health reflection grpc.health.v1.Health/Check '{"service":""}'
run health proto grpc.health.v1.Health/Check '{"service":""}'
run quota reflection blangko.v1.CounterService/GetQuota '{"office_id":"3201","service_point_id":"sp0"}'
run quota proto blangko.v1.CounterService/GetQuota '{"office_id":"3201","service_point_id":"sp1"}'
# The office's day when the Reserves begin, as the server keeps it (the load generator's check
# prints it).
cargo build --release --locked -q -p blangko-bench
day=$(target/release/blangko-bench --server "http://$addr" --offices 1 --service-points 16 --check-only \
  | awk '/^office day:/ {print $3}')
[[ -n "$day" ]] || { echo "the bench office's day could not be read"; exit 1; }
run reserve reflection blangko.v1.CounterService/Reserve "$(reserve_data ghz 01)"
run reserve proto blangko.v1.CounterService/Reserve "$(reserve_data ghzp 02)"

# Over-issue check: no service point above its quota, and every OK Reserve a new reservation
# (the quota is far above the load, so each call was answered with one). The load generator's
# own check, on the same office and service-point names; it sends BLANGKO_TOKEN when set.
target/release/blangko-bench --server "http://$addr" --offices 1 --service-points 16 --check-only \
  --expect-issued $((2 * calls)) --expect-date "$day" || failures=$((failures + 1))
if [[ $failures -gt 0 ]]; then
  echo "ghz: $failures scenario(s) with unexpected statuses or over-issue"
  exit 1
fi
echo "ghz: all scenarios OK"
