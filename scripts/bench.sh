#!/usr/bin/env bash
# Benchmark: sync N records of one stream from a local simulator into a Delta table;
# report records/s and the sync process's peak RSS. By default N Stripe charges (~4.3 KB
# of pretty-printed JSON each), answered at once with no rate limit.
# Results go into BENCHMARKS.md by hand, with the machine, the command and the load.
#
# Usage: scripts/bench.sh [records=100000]
#
# Environment (all optional):
#   BENCH_VENDOR       stripe (default), zendesk, salesforce (N accounts, read with REST),
#                      or a vendor written as a spec (chargebee, hubspot, ...; BENCH_STREAM
#                      then names the stream)
#   BENCH_STREAM       the stream to sync (default: charges for Stripe, tickets for Zendesk,
#                      account for Salesforce), or several, comma-separated, synced at once
#                      (records/s is then their sum over the whole run)
#   BENCH_MAX_CONCURRENCY  the source's max_concurrency (Stripe, Salesforce; default: its own)
#   BENCH_LATENCY_MS   the simulator's response latency per request (default 0)
#   BENCH_JITTER_MS    its jitter, ± (default: 20% of the latency)
#   BENCH_RATE_LIMIT   the simulator's limit in requests/s, 429 past it (default: none);
#                      Stripe's simulator then also limits each endpoint to 25/s, as Stripe does
#   BENCH_ENDPOINT_RATE_LIMIT  Stripe: the limit of each endpoint instead (an account whose
#                      endpoint limit Stripe has raised); the source's own follows it
#   BENCH_CONCURRENCY_LIMIT  Stripe: requests the simulator answers at once, 429 past it
#                      (Stripe's concurrency limiter; its number is not published)
#   BENCH_CLIENT_RPS   the source's own request rate (default: the simulator's limit, else
#                      10000 requests/s, the highest Stripe accepts)
#   BENCH_PORT         the simulator's port (default 12199)
#   BENCH_PERF         a file: record the sync with `perf record -g` into it
#   BENCH_KEEP         a directory: keep the run's logs and table there
#   BENCH_BIN          a tributary binary to run instead of building this tree's (for
#                      A/B runs against an older build)
#   BENCH_SANDBOX_BIN  the binary serving the simulator (default: the same)
#   BENCH_SOURCE_TOML  extra lines for the source's table (e.g. "max_concurrency = 1")
#   BENCH_SYNC_TOML    lines for a [sync] table (e.g. "row_group_size = 32768")
#   BENCH_RUNS         syncs to run one after another against the same simulator, each into
#                      a new warehouse (default 1); then a last line gives the median, the
#                      least and the most records/s. This host's speed drifts by a third
#                      over minutes (BENCHMARKS.md), so one run is an anecdote: read the
#                      median of ten, interleaved with any build it is compared against.
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-100000}"
port="${BENCH_PORT:-12199}"
vendor="${BENCH_VENDOR:-stripe}"
latency="${BENCH_LATENCY_MS:-0}"
rate_limit="${BENCH_RATE_LIMIT:-}"
client_rps="${BENCH_CLIENT_RPS:-${rate_limit:-10000}}"
runs="${BENCH_RUNS:-1}"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS: a whole number of runs, at least 1 (got '$runs')" >&2; exit 2; }
if [ "$runs" != 1 ] && [ -n "${BENCH_PERF:-}" ]; then
  echo "BENCH_PERF records one run: leave BENCH_RUNS unset" >&2
  exit 2
fi
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
if [ -n "${BENCH_BIN:-}" ]; then
  bin="$BENCH_BIN"
else
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-target}/release/tributary"
fi
work="$(mktemp -d)"
cleanup() {
  kill "$sandbox_pid" 2>/dev/null || true
  if [ -n "${BENCH_KEEP:-}" ]; then mkdir -p "$BENCH_KEEP" && cp -r "$work"/. "$BENCH_KEEP"/; fi
  rm -rf "$work"
}
trap cleanup EXIT

sandbox_args=(--port "$port" --records "$records")
[ "$latency" != 0 ] && sandbox_args+=(--latency-ms "$latency")
[ -n "${BENCH_JITTER_MS:-}" ] && sandbox_args+=(--latency-jitter-ms "$BENCH_JITTER_MS")
[ -n "$rate_limit" ] && sandbox_args+=(--rate-limit "$rate_limit")
endpoint_limit="${BENCH_ENDPOINT_RATE_LIMIT:-}"
if [ -n "$endpoint_limit" ] && [ "$vendor" != stripe ]; then
  echo "BENCH_ENDPOINT_RATE_LIMIT: only Stripe's simulator limits each endpoint" >&2
  exit 2
fi
[ -n "$endpoint_limit" ] && sandbox_args+=(--endpoint-rate-limit "$endpoint_limit")
[ -n "${BENCH_CONCURRENCY_LIMIT:-}" ] && sandbox_args+=(--concurrency-limit "$BENCH_CONCURRENCY_LIMIT")
"${BENCH_SANDBOX_BIN:-$bin}" sandbox "$vendor" "${sandbox_args[@]}" >"$work/sandbox.log" 2>&1 &
sandbox_pid=$!

case "$vendor" in
  stripe)
    stream="${BENCH_STREAM:-charges}"
    probe=(-H "Authorization: Bearer sk_test_tributary_sandbox" "http://127.0.0.1:$port/v1/charges?limit=1")
    source_config="type = \"stripe\"
api_key = \"sk_test_tributary_sandbox\"
api_base = \"http://127.0.0.1:$port\"
requests_per_second = $client_rps"
    # With a rate limit the simulator also limits each endpoint to Stripe's 25/s, which is
    # the source's default; without one, each endpoint may go as fast as the account.
    if [ -n "$endpoint_limit" ]; then
      source_config="$source_config
requests_per_second_per_endpoint = $endpoint_limit"
    elif [ -z "$rate_limit" ]; then
      source_config="$source_config
requests_per_second_per_endpoint = $client_rps"
    fi
    ;;
  zendesk)
    stream="${BENCH_STREAM:-tickets}"
    probe=(-u "admin@tributary.example/token:tributary-sandbox-token" "http://127.0.0.1:$port/api/v2/groups?page%5Bsize%5D=1")
    per_minute=$(python3 -c "print(min(1000000, round($client_rps * 60)))")
    source_config="type = \"zendesk\"
subdomain = \"tributary\"
email = \"admin@tributary.example\"
api_token = \"tributary-sandbox-token\"
api_base = \"http://127.0.0.1:$port\"
requests_per_minute = $per_minute
export_requests_per_minute = $per_minute"
    ;;
  salesforce)
    stream="${BENCH_STREAM:-account}"
    probe=(-X POST "http://127.0.0.1:$port/services/oauth2/token" -d "grant_type=refresh_token&client_id=tributary-sandbox-client&client_secret=tributary-sandbox-secret&refresh_token=tributary-sandbox-refresh-token")
    object=$(python3 -c "print(''.join(w.capitalize() for w in '$stream'.split('_')))")
    source_config="type = \"salesforce\"
login_url = \"http://127.0.0.1:$port\"
client_id = \"tributary-sandbox-client\"
client_secret = \"tributary-sandbox-secret\"
refresh_token = \"tributary-sandbox-refresh-token\"
objects = [\"$object\"]
bulk_threshold = 1000000000
requests_per_second = $client_rps"
    ;;
  *)
    # A vendor written as a spec (`tributary connector list`): its simulator prints the
    # source section that syncs it; BENCH_STREAM names the stream.
    stream="${BENCH_STREAM:?BENCH_STREAM: the stream of spec vendor $vendor (e.g. customers)}"
    probe=("http://127.0.0.1:$port/_sandbox/stats")
    for _ in $(seq 1 3000); do
      grep -q "^\[sources\.$vendor\]" "$work/sandbox.log" 2>/dev/null && break
      kill -0 "$sandbox_pid" 2>/dev/null || { echo "BENCH_VENDOR: no simulator for $vendor:" >&2; cat "$work/sandbox.log" >&2; exit 2; }
      sleep 0.1
    done
    source_config="$(sed -n "/^\[sources\.$vendor\]/,/^\$/p" "$work/sandbox.log" | sed '1d;/^requests_per_second/d;/^\$/d')
requests_per_second = $client_rps"
    ;;
esac
if [ -n "${BENCH_MAX_CONCURRENCY:-}" ]; then
  source_config="$source_config
max_concurrency = $BENCH_MAX_CONCURRENCY"
fi
# Seeding a large account takes a while; the sync must not start (and retry) before.
up=""
for _ in $(seq 1 3000); do
  curl -sf -o /dev/null "${probe[@]}" && { up=1; break; }
  kill -0 "$sandbox_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$up" ] || { echo "the $vendor simulator did not start:" >&2; cat "$work/sandbox.log" >&2; exit 1; }

cat >"$work/bench.toml" <<TOML
[warehouse]
url = "$work/warehouse"
[sources.$vendor]
$source_config
$( [ "$vendor" = salesforce ] || echo "streams = [\"${stream//,/\", \"}\"]" )
${BENCH_SOURCE_TOML:-}
TOML
sync_toml="${BENCH_SYNC_TOML:-}"
# Several streams sync at once, one worker each.
[[ "$stream" == *,* ]] && sync_toml="$sync_toml
concurrency = $(tr ',' '\n' <<<"$stream" | wc -l)"
if [ -n "$sync_toml" ]; then printf '[sync]\n%s\n' "$sync_toml" >>"$work/bench.toml"; fi

# The simulator shares the two cores with the sync: its CPU seconds during the sync.
sim_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14+$15)/hz}' "/proc/$sandbox_pid/stat"; }
rates=()
for run_no in $(seq 1 "$runs"); do
  if [ "$run_no" != 1 ]; then
    # A new warehouse, the simulator's counts from zero, and a second for its rate
    # windows to empty, as before the first run.
    rm -rf "$work/warehouse"
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/_sandbox/stats/reset"
    sleep 1
  fi
  sim_cpu_before=$(sim_cpu)
  if [[ "$stream" == *,* ]]; then
    run=("$bin" --config "$work/bench.toml" sync)
  else
    run=("$bin" --config "$work/bench.toml" sync --stream "$stream")
  fi
  if [ -n "${BENCH_PERF:-}" ]; then
    run=(perf record ${BENCH_PERF_ARGS:--g} -o "$BENCH_PERF" -- "${run[@]}")
  fi
  /usr/bin/time -f "peak_rss_kb=%M elapsed_s=%e user_s=%U sys_s=%S minor_faults=%R" -o "$work/time.txt" \
    "${run[@]}" >"$work/summary.txt" 2>"$work/sync.log"
  cat "$work/summary.txt"
  rss_kb=$(sed -n 's/.*peak_rss_kb=\([0-9]*\).*/\1/p' "$work/time.txt")
  elapsed=$(sed -n 's/.*elapsed_s=\([0-9.]*\).*/\1/p' "$work/time.txt")
  landed=0
  for one in ${stream//,/ }; do
    landed=$((landed + $(awk -v s="$vendor.$one" '$1==s{print $2}' "$work/summary.txt")))
  done
  stats=$(curl -s "http://127.0.0.1:$port/_sandbox/stats")
  throttled=$(python3 -c "import json,sys; print(json.load(sys.stdin).get('rate_limited', '?'))" <<<"$stats" 2>/dev/null || echo "?")
  busiest=$(python3 -c "import json,sys; print(json.load(sys.stdin).get('max_admitted_per_second', '?'))" <<<"$stats" 2>/dev/null || echo "?")
  rate=$(python3 -c "print(round($landed/$elapsed))" 2>/dev/null || echo 0)
  rates+=("$rate")
  echo "vendor=$vendor stream=$stream latency_ms=$latency rate_limit=${rate_limit:-none} records=$landed elapsed_s=$elapsed records_per_s=$rate peak_rss_mb=$(python3 -c "print(round($rss_kb/1024,1))") throttled=$throttled busiest_second=$busiest"
  for one in ${stream//,/ }; do du -sh "$work/warehouse/$vendor/$one" | awk -v s="$one" '{print "table_size("s")="$1}'; done
  sim_cpu_after=$(sim_cpu)
  sync_cpu=$(sed -n 's/.*user_s=\([0-9.]*\) sys_s=\([0-9.]*\).*/\1 \2/p' "$work/time.txt" | awk '{printf "%.2f", $1+$2}')
  sync_sys=$(sed -n 's/.*sys_s=\([0-9.]*\).*/\1/p' "$work/time.txt")
  faults=$(sed -n 's/.*minor_faults=\([0-9]*\).*/\1/p' "$work/time.txt")
  echo "sync_cpu_s=$sync_cpu (system $sync_sys, minor page faults $faults) simulator_cpu_s_during_sync=$(python3 -c "print(round($sim_cpu_after-$sim_cpu_before,2))")"
  echo "load: $(uptime | sed 's/.*load average: //')"
done
if [ "$runs" != 1 ]; then
  python3 - "${rates[@]}" <<'PY'
import statistics, sys
r = sorted(int(x) for x in sys.argv[1:])
print(f"runs={len(r)} records_per_s_median={round(statistics.median(r))} min={r[0]} max={r[-1]} all={','.join(sys.argv[1:])}")
PY
fi
