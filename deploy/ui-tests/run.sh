#!/usr/bin/env bash
# The dashboard (/ui) in a real browser: Playwright (npm playwright-core, pinned in
# package-lock.json) drives Debian's headless Chromium against the whole system, started
# by deploy/local/run.sh with binaries already built (BIN_DIR, default target/debug: what
# deploy/local/test.sh builds), on free ports with a state directory of its own, and
# stopped afterwards whatever happens.
#
#   deploy/ui-tests/run.sh                               # as CI runs it
#   UI_SCREENSHOTS=docs/screenshots deploy/ui-tests/run.sh   # also refresh the README's screenshots
#
# Installs what it needs: chromium (apt) if /usr/bin/chromium is missing, Node.js and npm
# (apt) if missing, and the pinned packages (npm ci).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
export BIN_DIR="${BIN_DIR:-target/debug}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

apt_install() {
  echo "Installing $* (apt)..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
[ -x "$CHROMIUM" ] || apt_install chromium
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
(cd deploy/ui-tests && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

for bin in jetjobs-admin jetjobs-gateway jetjobs-status jetjobs-notifier \
  jetjobs-processor-io jetjobs-processor-cpu jetjobs-loadgen; do
  [ -x "$BIN_DIR/$bin" ] || { echo "$BIN_DIR/$bin is missing: build first (cargo build --workspace --bins)" >&2; exit 1; }
done

# Seven free ports: NATS, its monitor, the gateway and the four admin listeners.
read -r NATS_PORT NATS_MONITOR_PORT GATEWAY_PORT P1 P2 P3 P4 < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(7)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
export NATS_PORT NATS_MONITOR_PORT
export JETJOBS_LISTEN="127.0.0.1:$GATEWAY_PORT"
export STATUS_ADMIN_LISTEN="127.0.0.1:$P1" PROCESSOR_IO_ADMIN_LISTEN="127.0.0.1:$P2"
export PROCESSOR_CPU_ADMIN_LISTEN="127.0.0.1:$P3" NOTIFIER_ADMIN_LISTEN="127.0.0.1:$P4"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/jetjobs-ui-tests.XXXXXX")"
export RUN_DIR
export JETJOBS_SHUTDOWN_GRACE_SECS=2
# Webhooks to the tests' receiver on 127.0.0.1 (gateway and notifier), retried quickly.
export JETJOBS_WEBHOOK_ALLOW=127.0.0.1/32 JETJOBS_WEBHOOK_RETRY_BASE_MS=200 JETJOBS_WEBHOOK_RETRY_MAX_MS=1000
export JETJOBS_URL="http://$JETJOBS_LISTEN"
export NATS_URL="nats://127.0.0.1:$NATS_PORT"
export LOADGEN="$ROOT/$BIN_DIR/jetjobs-loadgen"
case "$BIN_DIR" in /*) LOADGEN="$BIN_DIR/jetjobs-loadgen" ;; esac
# Screenshots of every page go here when set (relative to the repository).
UI_SCREENSHOTS="${UI_SCREENSHOTS:-}"
case "$UI_SCREENSHOTS" in /* | "") ;; *) UI_SCREENSHOTS="$ROOT/$UI_SCREENSHOTS" ;; esac
export UI_SCREENSHOTS

system=""
stop_system() {
  [ -n "$system" ] || return 0
  # run.sh stops the services in order, then nats-server; the session is killed after
  # 40 s whatever is left.
  kill -TERM "$system" 2>/dev/null || true
  for _ in $(seq 1 400); do kill -0 "$system" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$system" 2>/dev/null || true
  wait "$system" 2>/dev/null || true
  system=""
}
cleanup() {
  local status=$?
  stop_system
  if [ "$status" -ne 0 ]; then
    echo "Browser tests failed; the system's logs:" >&2
    for log in "$RUN_DIR"/run.log "$RUN_DIR"/logs/*.log; do
      [ -f "$log" ] && { echo "--- $log (last 30 lines)" >&2; tail -n 30 "$log" >&2; }
    done
  fi
  rm -rf "$RUN_DIR"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

setsid deploy/local/run.sh >"$RUN_DIR/run.log" 2>&1 &
system=$!
echo "Starting jetjobs for the browser tests at $JETJOBS_URL (state in $RUN_DIR)..." >&2
ready=no
for _ in $(seq 1 600); do
  kill -0 "$system" 2>/dev/null || break
  if python3 - "$JETJOBS_URL" <<'PY' 2>/dev/null; then ready=yes; break; fi
import json, sys, urllib.request
base = sys.argv[1]
urllib.request.urlopen(base + "/readyz", timeout=1)
kinds = json.load(urllib.request.urlopen(base + "/v1/kinds", timeout=1))["kinds"]
assert {k["kind"] for k in kinds} >= {"noop", "sleep", "flaky", "hash", "thumbnail"}
PY
  sleep 0.1
done
if [ "$ready" != yes ]; then
  echo "jetjobs did not become ready within 60 s" >&2
  exit 1
fi

cd deploy/ui-tests
node --test --test-concurrency=1 tests/
