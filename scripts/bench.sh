#!/usr/bin/env bash
# Benchmark: sync N Stripe charges (~4.3 KB of pretty-printed JSON each) from the local
# simulator into a Delta table; report records/s and the sync process's peak RSS.
# Results go into BENCHMARKS.md by hand, with the machine and the command.
#
# Usage: scripts/bench.sh [records=100000]
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-100000}"
port="${BENCH_PORT:-12199}"
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/tributary"
work="$(mktemp -d)"
trap 'kill $sandbox_pid 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin" sandbox stripe --port "$port" --records "$records" >"$work/sandbox.log" 2>&1 &
sandbox_pid=$!
for _ in $(seq 1 600); do
  curl -sf -o /dev/null -H "Authorization: Bearer sk_test_tributary_sandbox" "http://127.0.0.1:$port/v1/charges?limit=1" && break
  sleep 0.1
done

cat >"$work/bench.toml" <<TOML
[warehouse]
url = "$work/warehouse"
[sources.stripe]
type = "stripe"
api_key = "sk_test_tributary_sandbox"
api_base = "http://127.0.0.1:$port"
requests_per_second = 10000
streams = ["charges"]
TOML

/usr/bin/time -f "peak_rss_kb=%M elapsed_s=%e" -o "$work/time.txt" \
  "$bin" --config "$work/bench.toml" sync --stream charges >"$work/summary.txt" 2>"$work/sync.log"
cat "$work/summary.txt"
rss_kb=$(sed -n 's/.*peak_rss_kb=\([0-9]*\).*/\1/p' "$work/time.txt")
elapsed=$(sed -n 's/.*elapsed_s=\([0-9.]*\).*/\1/p' "$work/time.txt")
landed=$(awk '$1=="stripe.charges"{print $2}' "$work/summary.txt")
echo "records=$landed elapsed_s=$elapsed records_per_s=$(python3 -c "print(round($landed/$elapsed))") peak_rss_mb=$(python3 -c "print(round($rss_kb/1024,1))")"
du -sh "$work/warehouse/stripe/charges" | awk '{print "table_size="$1}'
