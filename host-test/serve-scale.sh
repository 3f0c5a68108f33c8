#!/usr/bin/env bash
# Cost of `connector-host serve` holding N instances (default 500) of the alerts component:
# RSS, threads, the time until every instance has polled once, CPU while idle, and how long
# SIGTERM takes. Each instance has a valid config (GUID tenant and client IDs, so configure
# accepts it) pointing at a closed loopback port: its polls fail at once (`network`) and it
# waits for its next turn, so what is measured is the host's cost per instance (a queue
# entry, its runner and health record), not Graph's.
#
#   host-test/serve-scale.sh 10000            # release host, serve's default workers
#   WORKERS=64 host-test/serve-scale.sh 100000
#   HOST=target/debug/connector-host host-test/serve-scale.sh 1000
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-500}"
# WORKERS=<n> sets serve's --workers; without it, serve's default.
workers="${WORKERS:-}"
target="${CARGO_TARGET_DIR:-target}"
# HOST=<binary> measures that build instead (e.g. a debug host, for a quick look).
if [ -n "${HOST:-}" ]; then
  host="$HOST"
else
  cargo build --release -p connector-host 2>/dev/null
  host="$target/release/connector-host"
fi
wasm="$(cd "$target" && pwd)/components/wasm32-wasip2/release/defender_alerts.wasm"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/instances" "$work/staged"
for i in $(seq 1 "$n"); do
  tenant=$(printf '%08x-0000-4000-8000-%012x' "$i" "$i")
  cat > "$work/staged/tenant-$i.json" <<JSON
{"component": "$wasm", "interval_secs": 3600,
 "config": {"tenant_id": "$tenant", "client_id": "2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e",
            "login_url": "http://127.0.0.1:9", "graph_url": "http://127.0.0.1:9"}}
JSON
done
# Events go to stdout (none arrive): an `--out` directory would hold a file per instance.
CONNECTOR_SECRET_CLIENT_SECRET=synthetic "$host" serve --instances "$work/instances" \
  --state "$work/state.db" --log-level warn --rescan-secs 1 ${workers:+--workers "$workers"} \
  >/dev/null 2>"$work/serve.log" &
pid=$!
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
sleep 2
base=$(rss) # serving no instance yet
t0=$(date +%s%N)
mv "$work"/staged/*.json "$work/instances/" 2>/dev/null ||
  find "$work/staged" -name '*.json' -exec mv -t "$work/instances/" {} +
# Every instance has polled once when its (failed) poll is in the health table.
# (Looked at every second, or every 10 s past 10,000 instances: `status` reads them all.)
every=1
[ "$n" -gt 10000 ] && every=10
polled=0
for _ in $(seq 1 3600); do
  polled=$( ("$host" status --state "$work/state.db" --json 2>/dev/null || echo '[]') |
    grep -oE '"last_error_code": ?"[a-z-]+"' | wc -l || true)
  [ "$polled" -ge "$n" ] && break
  sleep "$every"
done
t1=$(date +%s%N)
threads=$(ls "/proc/$pid/task" | wc -l)
now=$(rss)
c0=$(cpu_ticks)
sleep 10
c1=$(cpu_ticks)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
t2=$(date +%s%N)
kill -TERM "$pid"
wait "$pid" || true
t3=$(date +%s%N)
echo "instances: $n (polled once: $polled), workers: ${workers:-default}, threads: $threads"
echo "until every instance polled once: $(( (t1 - t0) / 1000000 )) ms"
echo "RSS: ${base} KiB serving nothing, ${now} KiB serving $n (peak ${peak} KiB)"
echo "per instance: $(( (now - base) / n )) KiB"
echo "CPU while idle: $(( (c1 - c0) * 10 )) ms over 10 s"
echo "SIGTERM to exit: $(( (t3 - t2) / 1000000 )) ms"
if grep -qiE 'panicked|abort' "$work/serve.log"; then
  echo "serve's log has a panic or abort:"; grep -iE 'panicked|abort' "$work/serve.log" | head
fi
