#!/usr/bin/env bash
# Benchmark of `tributary serve`: wrk POSTs /v1/batch bodies of BENCH_EVENTS (100) track
# calls for BENCH_SECONDS (60) over BENCH_CONNECTIONS (32) connections; then waits until
# every accepted event is a row of the `tracks` table, and prints events in, rows out,
# events/s accepted and landed, latency percentiles and the collector's peak RSS.
# Needs wrk (Debian: apt-get install wrk). Not part of the test suite.
#   BENCH_BIN=target/release/tributary scripts/bench_collector.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${BENCH_SECONDS:-60}"
events="${BENCH_EVENTS:-100}"
connections="${BENCH_CONNECTIONS:-32}"
threads="${BENCH_THREADS:-2}"
port="${BENCH_PORT:-18188}"
bin="${BENCH_BIN:-target/release/tributary}"
if [ "$bin" = target/release/tributary ]; then cargo build --release -p tributary --quiet; fi
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; }
dir="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
key="bench-write-key-0123456789abcdef"
cat >"$dir/tributary.toml" <<TOML
[warehouse]
url = "$dir/warehouse"

[serve]
max_pending = ${BENCH_MAX_PENDING:-1000000}

[sources.web]
type = "http"
write_keys = ["$key"]
TOML
# One body of $events track calls without messageId: the collector gives each its own.
python3 - "$events" >"$dir/body.json" <<'PY'
import json, sys
n = int(sys.argv[1])
print(json.dumps({"batch": [{"type": "track", "userId": f"user-{i}", "event": "Order Completed" if i % 2 else "Product Viewed",
  "properties": {"total": i * 1.5, "sku": f"SKU-{i}", "quantity": i}, "context": {"library": {"name": "wrk", "version": "4"}, "ip": "10.0.0.1"},
  "timestamp": "2026-01-01T00:00:00Z", "sentAt": "2026-01-01T00:00:01Z"} for i in range(n)]}))
PY
auth="$(printf '%s:' "$key" | base64 -w0)"
cat >"$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic $auth"
local f = io.open("$dir/body.json", "rb"); wrk.body = f:read("*a"); f:close()
statuses = {}
response = function(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
done = function(summary, latency, requests)
  io.write(string.format("p50_ms %.2f\np90_ms %.2f\np99_ms %.2f\nmax_ms %.2f\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
LUA
RUST_LOG=warn "$bin" serve --config "$dir/tributary.toml" --listen "127.0.0.1:$port" --spool "$dir/spool" >"$dir/serve.out" 2>"$dir/serve.err" &
pid=$!
for _ in $(seq 100); do grep -q "listening" "$dir/serve.out" 2>/dev/null && break; sleep 0.1; done
start=$(date +%s.%N)
wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s "$dir/post.lua" "http://127.0.0.1:$port/v1/batch" >"$dir/wrk.out"
sent_end=$(date +%s.%N)
cat "$dir/wrk.out"
requests=$(awk '/requests in/ {print $1}' "$dir/wrk.out")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$dir/wrk.out"); non2xx=${non2xx:-0}
accepted=$(( (requests - non2xx) * events ))
rows() { cat "$dir"/warehouse/web/tracks/_delta_log/*.json 2>/dev/null | grep -o '\\"numRecords\\":[0-9]*' | awk -F: '{s += $2} END {print s + 0}'; }
for _ in $(seq 600); do [ "$(rows)" -ge "$accepted" ] && break; sleep 0.5; done
landed_end=$(date +%s.%N)
out=$(rows)
rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
kill -TERM "$pid"; wait "$pid" || true
awk -v a="$accepted" -v o="$out" -v s="$start" -v e="$sent_end" -v l="$landed_end" -v r="$rss" -v n="$non2xx" 'BEGIN {
  printf "events in (200):      %d\nrefused requests:     %d\nrows out (tracks):    %d\n", a, n, o
  printf "accepted events/s:    %.0f\nlanded events/s:      %.0f (until the last row landed)\npeak RSS:             %.0f MB\n", a / (e - s), o / (l - s), r / 1024 }'
