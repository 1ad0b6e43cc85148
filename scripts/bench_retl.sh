#!/usr/bin/env bash
# Benchmark: a reverse-ETL model of N rows on a real PostgreSQL server (Debian's package,
# a throwaway cluster on 127.0.0.1), sent as identify calls to a local collector that
# accepts every batch (Python's standard library, gzip decoded, messages counted).
# Run 1 sends every row; then 1% of the rows change; run 2 must send exactly N/100 calls.
# Reports each run's wall time, the sync process's peak RSS and the calls received.
# Results go into BENCHMARKS.md by hand, with the machine, the command and the load.
#
# Usage: scripts/bench_retl.sh [rows=1000000]
#
# Environment (optional): BENCH_BIN (a tributary binary instead of building this tree's),
# BENCH_KEEP (a directory to keep the logs and warehouse in), BENCH_COMMIT_EVERY.
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-1000000}"
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
[ -x "$pg_bin/postgres" ] || { apt-get update -qq && apt-get install -y -qq postgresql; pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"; }
if [ -n "${BENCH_BIN:-}" ]; then
  bin="$BENCH_BIN"
else
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-target}/release/tributary"
fi
work="${BENCH_KEEP:-$(mktemp -d)}"
mkdir -p "$work"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$work"; as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port="$(free_port)"
collector_port="$(free_port)"
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg" -U tributary --auth=trust -E UTF8 --no-sync >/dev/null
"${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg" -p "$pg_port" -k "$work" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c synchronous_commit=off >"$work/postgres.log" 2>&1 &
pg_pid=$!
cat >"$work/collector.py" <<'EOF'
import gzip, http.server, json, sys, threading
count = 0
lock = threading.Lock()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        n = len(json.loads(body)["batch"])
        with lock:
            count += n
            open(sys.argv[2], "w").write(str(count))
        self.send_response(200); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
python3 "$work/collector.py" "$collector_port" "$work/received" &
collector_pid=$!
trap 'kill -QUIT $pg_pid 2>/dev/null; kill $collector_pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do psql -h 127.0.0.1 -p "$pg_port" -U tributary -d postgres -qc 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
psql -h 127.0.0.1 -p "$pg_port" -U tributary -d postgres -qc 'CREATE DATABASE app'
psql -h 127.0.0.1 -p "$pg_port" -U tributary -d app -q <<SQL
CREATE TABLE users (id bigint PRIMARY KEY, email text, name text, plan text, country text,
  signed_up_at timestamptz, seats integer);
INSERT INTO users SELECT g, 'user' || g || '@example.com', 'User ' || g, 'free',
  (ARRAY['US','DE','FR','BR','IN'])[1 + g % 5], '2024-01-01'::timestamptz + g * interval '1 minute', g % 50
  FROM generate_series(1, $rows) g;
SQL
cat >"$work/tributary.toml" <<EOF
[warehouse]
url = "$work/warehouse"

[sources.app_db]
type = "postgres"
url = "postgres://tributary@127.0.0.1:$pg_port/app"
tls = "disable"
commit_every = ${BENCH_COMMIT_EVERY:-10000}

[sources.app_db.tracking]
endpoint = "http://127.0.0.1:$collector_port"
write_key = "bench_write_key"

[sources.app_db.models.users]
query = "SELECT id, email, name, plan, country, signed_up_at, seats FROM users"
id = "id"

[sources.app_db.models.users.mapping]
call = "identify"
user_id = "id"
traits = ["email", "name", "plan", "country", "seats"]
timestamp = "signed_up_at"
EOF
echo 0 >"$work/received"
run() {
  local before
  before="$(cat "$work/received")"
  /usr/bin/time -f "%e %M" -o "$work/time.$1" "$bin" sync --config "$work/tributary.toml" >"$work/summary.$1" 2>"$work/log.$1"
  read -r seconds rss_kb <"$work/time.$1"
  echo "run $1: $(grep 'reverse ETL' "$work/summary.$1" | sed 's/^ *//'); $seconds s, peak RSS $((rss_kb / 1024)) MB, collector received $(($(cat "$work/received") - before)) calls"
  # When the model was read and committed (the rest is delivery to the collector).
  grep -o 'Reverse-ETL model read.*commits=[0-9]*' "$work/log.$1" | sed 's/^/    /' || true
}
run 1
psql -h 127.0.0.1 -p "$pg_port" -U tributary -d app -qc "UPDATE users SET plan = 'pro' WHERE id % 100 = 0"
run 2
