#!/usr/bin/env bash
# Memory of `connector-host serve` holding N instances (default 500) of the alerts
# component, and how long SIGTERM takes to stop them all. The instances point at a closed
# loopback port, so each one's polls fail fast and it waits for its next turn: what is
# measured is the host's cost per instance (thread, store, component instance), not Graph's.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-500}"
cargo build --release -p connector-host 2>/dev/null
target="${CARGO_TARGET_DIR:-target}"
host="$target/release/connector-host"
wasm="$target/components/wasm32-wasip2/release/defender_alerts.wasm"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/instances" "$work/staged"
for i in $(seq 1 "$n"); do
  cat > "$work/staged/tenant-$i.json" <<JSON
{"component": "$wasm", "interval_secs": 3600,
 "config": {"tenant_id": "tenant-$i.example.com", "client_id": "2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e",
            "login_url": "http://127.0.0.1:9", "graph_url": "http://127.0.0.1:9"}}
JSON
done
CONNECTOR_SECRET_CLIENT_SECRET=synthetic "$host" serve --instances "$work/instances" \
  --state "$work/state.db" --out "$work/out" --log-level warn --rescan-secs 1 \
  2>"$work/serve.log" &
pid=$!
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
sleep 2
base=$(rss) # serving no instance yet
mv "$work"/staged/*.json "$work/instances/"
# Every instance has started once its first (failing) poll is in the health table.
for _ in $(seq 1 120); do
  started=$( ("$host" status --state "$work/state.db" 2>/dev/null || true) | tail -n +2 | wc -l)
  [ "$started" -ge "$n" ] && break
  sleep 1
done
sleep 5
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
now=$(rss)
threads=$(ls "/proc/$pid/task" | wc -l)
t0=$(date +%s%N)
kill -TERM "$pid"
wait "$pid" || true
t1=$(date +%s%N)
echo "instances: $n (started: $started), threads: $threads"
echo "RSS: ${base} KiB serving nothing, ${now} KiB serving $n (peak ${peak} KiB)"
echo "per instance: $(( (now - base) / n )) KiB"
echo "SIGTERM to exit: $(( (t1 - t0) / 1000000 )) ms"
