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
# Services without an HTTP API serve /metrics on an admin address each; change them (and
# the three above, and RUN_DIR) to run a second system beside the first.
STATUS_ADMIN="${STATUS_ADMIN_LISTEN:-127.0.0.1:9101}"
PROCESSOR_IO_ADMIN="${PROCESSOR_IO_ADMIN_LISTEN:-127.0.0.1:9102}"
PROCESSOR_CPU_ADMIN="${PROCESSOR_CPU_ADMIN_LISTEN:-127.0.0.1:9103}"
NOTIFIER_ADMIN="${NOTIFIER_ADMIN_LISTEN:-127.0.0.1:9104}"
# How long the services may take to finish in-flight work when stopped.
export JETJOBS_SHUTDOWN_GRACE_SECS="${JETJOBS_SHUTDOWN_GRACE_SECS:-10}"
PROFILE="${PROFILE:-release}"
RUN_DIR="${RUN_DIR:-.run}"
export NATS_URL="nats://127.0.0.1:${NATS_PORT}"
export RUST_LOG="${RUST_LOG:-info}"
# A development signing secret for webhooks; set your own (whsec_<base64>) for anything real.
export JETJOBS_WEBHOOK_SECRETS="${JETJOBS_WEBHOOK_SECRETS:-whsec_ZGV2ZWxvcG1lbnQtb25seS1zZWNyZXQtMzJieXRlcw==}"

if [ -n "${BIN_DIR:-}" ]; then
  # Binaries built elsewhere (e.g. by deploy/local/test.sh): run those, build nothing.
  BIN="$BIN_DIR"
else
  build_flag=(--release)
  [ "$PROFILE" = "debug" ] && build_flag=()
  echo "Building jetjobs ($PROFILE)..." >&2
  cargo build --workspace --bins "${build_flag[@]}"
  BIN="target/$PROFILE"
fi

mkdir -p "$RUN_DIR/logs"
# Every child runs in its own session (setsid), so a terminal's Ctrl-C reaches this
# script alone and it stops the system in order: services first (they finish in-flight
# work, then hand the rest back to NATS), nats-server last. A second Ctrl-C (or TERM)
# stops waiting and kills whatever is left; no signal leaves a child behind.
pids=()
stopping=no
# Waits until every pid given has exited, for at most $1 seconds.
wait_gone() {
  local deadline=$((SECONDS + $1)); shift
  while [ "$SECONDS" -lt "$deadline" ]; do
    local alive=no
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=yes; done
    [ "$alive" = no ] && return 0
    sleep 0.1
  done
  return 1
}
kill_all() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
stop() {
  if [ "$stopping" = yes ]; then
    echo "Stopping now." >&2
    kill_all
    exit 130
  fi
  stopping=yes
  echo >&2
  echo "Stopping jetjobs (Ctrl-C again to stop at once)..." >&2
  local services=("${pids[@]:1}")
  if [ "${#services[@]}" -gt 0 ]; then
    for pid in "${services[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # The services' own bound: grace, then a watchdog 10 s later.
    wait_gone $((JETJOBS_SHUTDOWN_GRACE_SECS + 12)) "${services[@]}" || kill_all
  fi
  if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[0]}" 2>/dev/null || true
    wait_gone 10 "${pids[0]}" || kill_all
  fi
  wait 2>/dev/null || true
  echo "Stopped. Logs are in $RUN_DIR/logs." >&2
}
trap stop INT TERM HUP
trap '[ "$stopping" = yes ] || stop' EXIT

# JetStream reserves every stream's max_bytes against max_file_store, which nats-server
# otherwise sizes from the disk's free space (75 %): with less than ~40 GB free, the
# default limits (job_blobs alone is 16 GiB) would not fit and provisioning would fail.
# 1TB is a ceiling for the reservations, not a size: a disk that really fills is the
# full-store case (writes refused, nothing forgotten; docs/operations.md).
# NATS_SYNC_INTERVAL ("always", or a duration such as "1s") sets when JetStream fsyncs;
# unset, nats-server's default applies (every 2 minutes), unlike deploy/nats/nats.conf:
# see docs/durability.md.
{
  printf 'jetstream {\n  max_file_store: 1TB\n'
  if [ -n "${NATS_SYNC_INTERVAL:-}" ]; then
    printf '  sync_interval: "%s"\n' "$NATS_SYNC_INTERVAL"
  fi
  printf '}\n'
} >"$RUN_DIR/nats.conf"
nats_conf=(-c "$RUN_DIR/nats.conf")
setsid "$NATS_SERVER_BIN" "${nats_conf[@]}" -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
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
  setsid "$BIN/$2" >"$RUN_DIR/logs/$1.log" 2>&1 &
  pids+=($!)
}
JETJOBS_ADMIN_LISTEN="$STATUS_ADMIN" start status jetjobs-status
JETJOBS_ADMIN_LISTEN="$NOTIFIER_ADMIN" start notifier jetjobs-notifier
JETJOBS_ADMIN_LISTEN="$PROCESSOR_IO_ADMIN" start processor-io jetjobs-processor-io
JETJOBS_ADMIN_LISTEN="$PROCESSOR_CPU_ADMIN" start processor-cpu jetjobs-processor-cpu
JETJOBS_LISTEN="$GATEWAY_ADDR" start gateway jetjobs-gateway

for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://${GATEWAY_ADDR}/readyz', timeout=1)" 2>/dev/null; then break; fi
  sleep 0.1
done

cat <<MSG

jetjobs is running.
  gateway:  http://${GATEWAY_ADDR}   (metrics http://${GATEWAY_ADDR}/metrics)
  metrics:  status http://${STATUS_ADMIN}/metrics, processor-io http://${PROCESSOR_IO_ADMIN}/metrics,
            processor-cpu http://${PROCESSOR_CPU_ADMIN}/metrics, notifier http://${NOTIFIER_ADMIN}/metrics
  webhooks: signed with JETJOBS_WEBHOOK_SECRETS=${JETJOBS_WEBHOOK_SECRETS}
  NATS:     ${NATS_URL}   (monitoring http://127.0.0.1:${NATS_MONITOR_PORT})
  logs:     ${RUN_DIR}/logs/

Try:
  curl -si http://${GATEWAY_ADDR}/v1/jobs -H 'content-type: application/json' -d '{"kind":"sleep","payload":{"ms":500}}'

Press Ctrl-C to stop.
MSG
# `wait` returns early when a trapped signal arrives; the trap then stops everything.
wait -n "${pids[@]}" || true
if [ "$stopping" = no ]; then echo "A component exited; see $RUN_DIR/logs." >&2; fi
