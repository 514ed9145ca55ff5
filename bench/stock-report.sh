#!/usr/bin/env bash
# GetStockReport on an office with a long ledger: how long the daily stock report takes for one
# day, 30 days and 366 days, and for one day 300 days ago, when the office has a year of entries behind it, for one or more
# server builds, alternating on copies of the same file.
#
# Usage: bench/stock-report.sh [DAYS] [ENTRIES_PER_DAY] [CALLS]
#   (defaults: 365 days of ledger, 1,500 entries a day, 20 reports of each range per build)
# Environment: SERVERS (space-separated blangko-server binaries to compare; default
# target/release/blangko-server, built from this source unless given), ROUNDS (default 2), GHZ
# (path to ghz; installed with `go install` when missing), COUNTER (the blangko-counter binary;
# default target/release/blangko-counter, built from this source unless given).
#
# A server makes the schema and office 3201 on a fresh SQLite file and stops. Python's sqlite3
# then writes the ledger straight into the file: per past local day one shipment, and Reserve
# and Commit entries in pairs (one printed blank each), each with its running on-hand balance,
# so every report reconciles. Only what the report reads is real: the entries carry no hashes
# and no held balance, so a ledger check (VerifyLedger) of that file would fail. Each round starts every build in turn on a copy of that file and calls
# GetStockReport CALLS times per range, one call at a time, with ghz; the script prints ghz's
# mean and p95 per range and build, and fails when a call is not OK or when the year's report,
# run with blangko-counter as a supervisor would, does not reconcile. Loopback only; every run is bounded by a call count.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
days=${1:-365}
per_day=${2:-1500}
calls=${3:-20}
rounds=${ROUNDS:-2}
servers=${SERVERS:-target/release/blangko-server}

# ghz: $GHZ, one on PATH, or installed with `go install` (and Go fetched when there is none of
# 1.21 or newer), see .ci/go.sh.
# shellcheck source=.ci/go.sh
source .ci/go.sh
ensure_ghz
[[ -n "${SERVERS:-}" ]] || cargo build --release --locked -q -p blangko-server
if [[ -n "${COUNTER:-}" ]]; then
  counter=$COUNTER
  [[ -x "$counter" ]] || { echo "COUNTER=$counter is not an executable" >&2; exit 1; }
else
  counter=target/release/blangko-counter
  cargo build --release --locked -q -p blangko-counter
fi
work=$(mktemp -d)
# shellcheck source=.ci/stop.sh
source .ci/stop.sh
# shellcheck source=.ci/own-env.sh
source .ci/own-env.sh
# shellcheck disable=SC2046 # one pid per word
trap 'stop_pids $(jobs -p); rm -rf "$work"' EXIT

# Starts $1 on $2; sets addr and pid.
start() {
  : > "$work/server.out"
  "$1" --listen 127.0.0.1:0 --database "sqlite:$2" --log warn > "$work/server.out" 2> "$work/server.err" &
  pid=$!
  addr=
  for _ in $(seq 1 100); do
    addr=$(awk '/listening/ {print $NF}' "$work/server.out" 2>/dev/null || true)
    [[ -n "$addr" ]] && break
    sleep 0.1
  done
  [[ -n "$addr" ]] || { cat "$work/server.err"; echo "server did not start" >&2; exit 1; }
}
stop() {
  stop_pids "$pid"
}

first=${servers%% *}
start "$first" "$work/seed.db"
"$ghz" --insecure --call blangko.v1.StockService/UpsertOffice -n 1 -c 1 \
  -d '{"request_id":"report-office-{{.UUID}}","office":{"office_id":"3201","name":"Bench","time_zone":"Asia/Jakarta"}}' \
  --format json "$addr" > "$work/setup.json"
stop
# ghz exits 0 even when its call fails: the office must have been made.
python3 - "$work/setup.json" <<'EOF2'
import json, sys
codes = json.load(open(sys.argv[1])).get("statusCodeDistribution", {})
if codes != {"OK": 1}:
    sys.exit(f"the office was not set up: status codes {codes}")
EOF2

python3 - "$work/seed.db" "$days" "$per_day" <<'EOF'
import sqlite3, sys, time
path, days, per_day = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
DAY, OFFSET = 86_400_000, 7 * 3_600_000  # WIB
SHIPMENT, RESERVE, COMMIT = 1, 5, 6
today = (int(time.time() * 1000) + OFFSET) // DAY
db = sqlite3.connect(path)
# Go on from the office's own entries (none or a few, from its creation).
seq, on_hand = db.execute("SELECT ledger_seq, on_hand FROM offices WHERE office_id = '3201'").fetchone()
for d in range(today - days, today):
    local_date = time.strftime("%Y-%m-%d", time.gmtime(d * 86_400))
    start_ms = d * DAY - OFFSET + 8 * 3_600_000  # 08:00 local
    step = 8 * 3_600_000 // per_day
    rows = []
    def entry(kind, ms, on_hand_delta, held_delta):
        global seq, on_hand
        seq += 1
        on_hand += on_hand_delta
        rows.append(("3201", seq, kind, ms, local_date, "bench", on_hand_delta, held_delta,
                     on_hand, 0, "sp0", "", "", "", "", "", "", ""))
    pairs = (per_day - 1) // 2
    entry(SHIPMENT, start_ms, pairs, 0)
    for i in range(pairs):
        entry(RESERVE, start_ms + (2 * i + 1) * step, 0, 1)
        entry(COMMIT, start_ms + (2 * i + 2) * step, -1, -1)
    db.executemany("INSERT INTO ledger VALUES (" + ", ".join("?" * 18) + ")", rows)
db.execute("UPDATE offices SET ledger_seq = ?, on_hand = ? WHERE office_id = '3201'", (seq, on_hand))
db.commit()
db.close()
print(f"ledger: {seq} entries over {days} days")
EOF

today=$(TZ=Asia/Jakarta date +%F)
yesterday=$(TZ=Asia/Jakarta date -d yesterday +%F)
from30=$(TZ=Asia/Jakarta date -d '30 days ago' +%F)
from366=$(TZ=Asia/Jakarta date -d '365 days ago' +%F)
# One day long ago: its opening balance is the last entry recorded before it, 300 days back.
old=$(TZ=Asia/Jakarta date -d '300 days ago' +%F)
printf '%-6s %-40s %12s %10s %10s\n' round build range "mean ms" "p95 ms"
for round in $(seq 1 "$rounds"); do
  for server in $servers; do
    cp "$work/seed.db" "$work/run.db"
    cp "$work/seed.db.nikkey" "$work/run.db.nikkey"
    start "$server" "$work/run.db"
    for range in "1d:$yesterday:$yesterday" "30d:$from30:$yesterday" "366d:$from366:$today" \
      "1d-300d-ago:$old:$old"; do
      IFS=: read -r name from to <<< "$range"
      "$ghz" --insecure --call blangko.v1.StockService/GetStockReport -n "$calls" -c 1 \
        -d "{\"office_id\":\"3201\",\"from_date\":\"$from\",\"to_date\":\"$to\"}" \
        --format json "$addr" > "$work/ghz.json"
      python3 - "$work/ghz.json" "$round" "$server" "$name" <<'EOF'
import json, sys
report, round_, server, name = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4]
codes = report.get("statusCodeDistribution", {})
if set(codes) != {"OK"}:
    sys.exit(f"{server} {name}: status codes {codes}")
p95 = next(l["latency"] for l in report["latencyDistribution"] if l["percentage"] == 95)
print(f"{round_:<6} {server:<40} {name:>12} {report['average'] / 1e6:10.1f} {p95 / 1e6:10.1f}")
EOF
    done
    # The year's report as a supervisor runs it must reconcile (the client exits 1 otherwise):
    # the ledger above adds up, so the figures the timed calls gave are whole.
    "$counter" --server "http://$addr" --office 3201 report --from "$from366" --to "$today" \
      > "$work/report.txt" || { tail -3 "$work/report.txt"; echo "$server: report does not reconcile" >&2; exit 1; }
    stop
  done
done
