#!/usr/bin/env bash
# Benchmark of `tributary serve`, in two parts, each against a fresh collector:
#   batch: wrk POSTs /v1/batch bodies of BENCH_EVENTS (100) track calls for BENCH_SECONDS
#          (60) over BENCH_CONNECTIONS (32) connections, as fast as it can;
#   track: oha POSTs BENCH_RATE × BENCH_SECONDS single /v1/track calls at a fixed
#          BENCH_RATE (2000) per second over BENCH_TRACK_CONNECTIONS (64) connections
#          (latency measured from when each request was due, so a stall is not hidden).
# Each part then waits until every accepted event is a row of the `tracks` table, and
# prints events in, rows out, events/s accepted and landed, latency percentiles and the
# collector's peak RSS. Needs wrk (Debian: apt-get install wrk) and oha (cargo install oha;
# BENCH_OHA=path). BENCH_COMMIT_MESSAGES sets serve.commit_messages (default: the
# collector's). Not part of the test suite.
#   BENCH_BIN=target/release/tributary scripts/bench_collector.sh [batch|track|all]
set -euo pipefail
cd "$(dirname "$0")/.."
part="${1:-all}"
seconds="${BENCH_SECONDS:-60}"
events="${BENCH_EVENTS:-100}"
connections="${BENCH_CONNECTIONS:-32}"
threads="${BENCH_THREADS:-2}"
rate="${BENCH_RATE:-2000}"
track_connections="${BENCH_TRACK_CONNECTIONS:-64}"
port="${BENCH_PORT:-18188}"
bin="${BENCH_BIN:-target/release/tributary}"
oha="${BENCH_OHA:-$(command -v oha || true)}"
if [ "$bin" = target/release/tributary ]; then cargo build --release -p tributary --quiet; fi
case "$part" in
  batch | all) command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; } ;;
esac
case "$part" in
  track | all) [ -x "$oha" ] || { echo "oha is not installed (cargo install oha, or BENCH_OHA=path)"; exit 1; } ;;
esac
dir="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
key="bench-write-key-0123456789abcdef"
auth="$(printf '%s:' "$key" | base64 -w0)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# Starts a collector on a fresh warehouse and spool ($dir/$1).
start() {
  local run="$dir/$1"
  mkdir -p "$run"
  cat >"$run/tributary.toml" <<TOML
[warehouse]
url = "$run/warehouse"

[serve]
max_pending = ${BENCH_MAX_PENDING:-1000000}
${BENCH_COMMIT_MESSAGES:+commit_messages = $BENCH_COMMIT_MESSAGES}

[sources.web]
type = "http"
write_keys = ["$key"]
TOML
  RUST_LOG=warn "$bin" serve --config "$run/tributary.toml" --listen "127.0.0.1:$port" --spool "$run/spool" \
    --metrics "127.0.0.1:$((port + 1))" >"$run/serve.out" 2>"$run/serve.err" &
  pid=$!
  for _ in $(seq 100); do grep -q "listening" "$run/serve.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening" "$run/serve.out" || { cat "$run/serve.err"; exit 1; }
}

# Rows of the `tracks` table (from the commits' numRecords).
rows() { cat "$dir/$1"/warehouse/web/tracks/_delta_log/*.json 2>/dev/null | grep -o '\\"numRecords\\":[0-9]*' | awk -F: '{s += $2} END {print s + 0}'; }

# Messages the collector acknowledged, from its metrics: the load tool's count misses
# the requests still in flight when it stops.
accepted() { curl -s "http://127.0.0.1:$((port + 1))/metrics" | awk '/^tributary_collector_messages_accepted_total/ {s += $2} END {print s + 0}'; }

# Waits until run $1's tables hold every acknowledged message, stops the collector and
# prints the summary ($2: requests the load tool saw refused).
finish() {
  local run=$1 refused=$2 start=$3 sent_end=$4 accepted
  # (re-read: a request the tool gave up on at its end may still be spooled just after)
  for _ in $(seq 600); do accepted=$(accepted); [ "$(rows "$run")" -ge "$accepted" ] && break; sleep 0.5; done
  local landed_end out rss
  landed_end=$(date +%s.%N)
  out=$(rows "$run")
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  curl -s "http://127.0.0.1:$((port + 1))/metrics" | grep '^tributary_collector_busy_total' || true
  kill -TERM "$pid"; wait "$pid" || true; pid=""
  awk -v a="$accepted" -v o="$out" -v s="$start" -v e="$sent_end" -v l="$landed_end" -v r="$rss" -v n="$refused" 'BEGIN {
    printf "events in (acknowledged): %d\nrefused requests:     %d\nrows out (tracks):    %d\n", a, n, o
    printf "accepted events/s:    %.0f\nlanded events/s:      %.0f (until the last row landed)\npeak RSS:             %.0f MB\n", a / (e - s), o / (l - s), r / 1024 }'
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
}

batch() {
  echo "== batch: wrk -t$threads -c$connections -d${seconds}s, $events track calls per /v1/batch"
  start batch
  # One body of $events track calls without messageId: the collector gives each its own.
  python3 - "$events" >"$dir/body.json" <<'PY'
import json, sys
n = int(sys.argv[1])
print(json.dumps({"batch": [{"type": "track", "userId": f"user-{i}", "event": "Order Completed" if i % 2 else "Product Viewed",
  "properties": {"total": i * 1.5, "sku": f"SKU-{i}", "quantity": i}, "context": {"library": {"name": "wrk", "version": "4"}, "ip": "10.0.0.1"},
  "timestamp": "2026-01-01T00:00:00Z", "sentAt": "2026-01-01T00:00:01Z"} for i in range(n)]}))
PY
  cat >"$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic $auth"
local f = io.open("$dir/body.json", "rb"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  io.write(string.format("p50_ms %.2f\np90_ms %.2f\np99_ms %.2f\nmax_ms %.2f\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
LUA
  local start sent_end non2xx
  start=$(date +%s.%N)
  wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s "$dir/post.lua" "http://127.0.0.1:$port/v1/batch" >"$dir/wrk.out"
  sent_end=$(date +%s.%N)
  cat "$dir/wrk.out"
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$dir/wrk.out"); non2xx=${non2xx:-0}
  finish batch "$non2xx" "$start" "$sent_end"
}

track() {
  echo "== track: oha -q $rate -c $track_connections -n $((rate * seconds)), one track call per /v1/track"
  start track
  printf '%s' '{"userId": "user-1", "event": "Order Completed", "properties": {"total": 12.5, "sku": "SKU-1"}, "context": {"library": {"name": "oha", "version": "1"}}, "timestamp": "2026-01-01T00:00:00Z", "sentAt": "2026-01-01T00:00:01Z"}' >"$dir/track.json"
  local start sent_end ok total
  start=$(date +%s.%N)
  "$oha" --no-tui --output-format json -n $((rate * seconds)) -q "$rate" --latency-correction \
    -c "$track_connections" -m POST -H "Authorization: Basic $auth" -T application/json -D "$dir/track.json" \
    "http://127.0.0.1:$port/v1/track" >"$dir/oha.json"
  sent_end=$(date +%s.%N)
  python3 - "$dir/oha.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
print(f"requests/s:           {s['requestsPerSec']:.0f}")
print(f"status codes:         {codes}")
print(f"errors:               {r.get('errorDistribution', {})}")
for q in ("p50", "p90", "p99", "p99.9"):
    print(f"{q}_ms {p[q] * 1000:.2f}")
print(f"max_ms {s['slowest'] * 1000:.2f}")
PY
  ok=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("statusCodeDistribution", {}).get("200", 0))' "$dir/oha.json")
  total=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(sum(d.get("statusCodeDistribution", {}).values()) + sum(d.get("errorDistribution", {}).values()))' "$dir/oha.json")
  finish track $((total - ok)) "$start" "$sent_end"
}

case "$part" in
  batch) batch ;;
  track) track ;;
  all) batch; track ;;
  *) echo "usage: $0 [batch|track|all]"; exit 2 ;;
esac
