#!/usr/bin/env bash
# Starts the whole jetjobs system on this machine, without Docker: nats-server with
# JetStream, provisioning, the status service, the notifier, both processors and the gateway.
# Ctrl-C stops everything. State lives in .run/ (delete it for a clean start).
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/nats-server.sh

NATS_PORT="${NATS_PORT:-4222}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-8222}"
GATEWAY_ADDR="${JETJOBS_LISTEN:-127.0.0.1:8080}"
PROFILE="${PROFILE:-release}"
RUN_DIR="${RUN_DIR:-.run}"
export NATS_URL="nats://127.0.0.1:${NATS_PORT}"
export RUST_LOG="${RUST_LOG:-info}"
# A development signing secret for webhooks; set your own (whsec_<base64>) for anything real.
export JETJOBS_WEBHOOK_SECRETS="${JETJOBS_WEBHOOK_SECRETS:-whsec_ZGV2ZWxvcG1lbnQtb25seS1zZWNyZXQtMzJieXRlcw==}"

build_flag=(--release)
[ "$PROFILE" = "debug" ] && build_flag=()
echo "Building jetjobs ($PROFILE)..." >&2
cargo build --workspace --bins "${build_flag[@]}"
BIN="target/$PROFILE"

mkdir -p "$RUN_DIR/logs"
pids=()
stop() {
  trap - INT TERM EXIT
  echo >&2
  echo "Stopping jetjobs..." >&2
  # Services first (they finish in-flight work), NATS last.
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
  echo "Stopped. Logs are in $RUN_DIR/logs." >&2
}
trap stop INT TERM EXIT

# NATS_SYNC_INTERVAL ("always", or a duration such as "1s") sets when JetStream fsyncs;
# nats-server has no flag for it, hence the config file. Unset, nats-server's default
# applies (every 2 minutes), unlike deploy/nats/nats.conf: see docs/durability.md.
nats_conf=()
if [ -n "${NATS_SYNC_INTERVAL:-}" ]; then
  printf 'jetstream {\n  sync_interval: "%s"\n}\n' "$NATS_SYNC_INTERVAL" >"$RUN_DIR/nats.conf"
  nats_conf=(-c "$RUN_DIR/nats.conf")
fi
"$NATS_SERVER_BIN" "${nats_conf[@]}" -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
  --store_dir "$RUN_DIR/nats" -n jetjobs-local >"$RUN_DIR/logs/nats.log" 2>&1 &
pids+=($!)
nats_ready=no
for _ in $(seq 1 100); do
  if ! kill -0 "${pids[0]}" 2>/dev/null; then break; fi
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:${NATS_MONITOR_PORT}/healthz?js-enabled-only=true', timeout=1)" 2>/dev/null; then nats_ready=yes; break; fi
  sleep 0.1
done
if [ "$nats_ready" != yes ] || ! kill -0 "${pids[0]}" 2>/dev/null; then
  echo "nats-server did not start (is port $NATS_PORT or $NATS_MONITOR_PORT in use?):" >&2
  tail -n 5 "$RUN_DIR/logs/nats.log" >&2
  exit 1
fi

"$BIN/jetjobs-admin" provision

start() { # name binary
  "$BIN/$2" >"$RUN_DIR/logs/$1.log" 2>&1 &
  pids+=($!)
}
# Services without an HTTP API serve /metrics on an admin port each.
JETJOBS_ADMIN_LISTEN=127.0.0.1:9101 start status jetjobs-status
JETJOBS_ADMIN_LISTEN=127.0.0.1:9104 start notifier jetjobs-notifier
JETJOBS_ADMIN_LISTEN=127.0.0.1:9102 start processor-io jetjobs-processor-io
JETJOBS_ADMIN_LISTEN=127.0.0.1:9103 start processor-cpu jetjobs-processor-cpu
JETJOBS_LISTEN="$GATEWAY_ADDR" start gateway jetjobs-gateway

for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://${GATEWAY_ADDR}/readyz', timeout=1)" 2>/dev/null; then break; fi
  sleep 0.1
done

cat <<MSG

jetjobs is running.
  gateway:  http://${GATEWAY_ADDR}   (metrics http://${GATEWAY_ADDR}/metrics)
  metrics:  status http://127.0.0.1:9101/metrics, processor-io :9102, processor-cpu :9103, notifier :9104
  NATS:     ${NATS_URL}   (monitoring http://127.0.0.1:${NATS_MONITOR_PORT})
  logs:     ${RUN_DIR}/logs/

Try:
  curl -si http://${GATEWAY_ADDR}/v1/jobs -H 'content-type: application/json' -d '{"kind":"sleep","payload":{"ms":500}}'

Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}" || true
echo "A component exited; see $RUN_DIR/logs." >&2
