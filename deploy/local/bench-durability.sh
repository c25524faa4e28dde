#!/usr/bin/env bash
# What does fsync-before-PubAck cost jetjobs? Runs the noop workload against a fresh
# single nats-server with JetStream's default sync (fsync every 2 minutes) and with
# `sync_interval: always`, alternating the two so that drift in machine load hits both,
# and prints every run and the medians. docs/durability.md has the results and the
# decision they support.
#
# Usage: deploy/local/bench-durability.sh
# Environment (defaults in brackets):
#   ROUNDS [3]          runs per setting
#   JOBS [10000], CONCURRENCY [64]   the throughput run
#   SERIAL_JOBS [1000]  the one-client latency run (concurrency 1)
#   WARMUP_JOBS [500]   submitted first and not counted
#   BENCH_DIR [target]  where the temporary JetStream stores go; must be a real disk
#   RESULTS_DIR [target/bench-durability/<timestamp>]  raw loadgen JSON and the tables
#   QUIET_LOAD [nproc/2], QUIET_WAIT_SECS [180]  before each run, wait up to that long
#                       for the 1-minute load average to fall to QUIET_LOAD
#   SETTINGS ["default always"]  "default" leaves sync_interval unset; anything else
#                       is written as `sync_interval: <value>` (e.g. 1s)
#   SKIP_BUILD          set to 1 to use the release binaries as they are
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/nats-server.sh

ROUNDS="${ROUNDS:-3}"
JOBS="${JOBS:-10000}"
CONCURRENCY="${CONCURRENCY:-64}"
SERIAL_JOBS="${SERIAL_JOBS:-1000}"
WARMUP_JOBS="${WARMUP_JOBS:-500}"
BENCH_DIR="${BENCH_DIR:-target}"
RESULTS_DIR="${RESULTS_DIR:-target/bench-durability/$(date +%Y%m%d-%H%M%S)}"
QUIET_LOAD="${QUIET_LOAD:-$(awk -v n="$(nproc)" 'BEGIN { print n / 2 }')}"
QUIET_WAIT_SECS="${QUIET_WAIT_SECS:-180}"
read -r -a SETTINGS <<<"${SETTINGS:-default always}"
BIN=target/release

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "Building jetjobs (release)..." >&2
  cargo build --release --workspace --bins
fi
mkdir -p "$BENCH_DIR" "$RESULTS_DIR"
BENCH_DIR="$(cd "$BENCH_DIR" && pwd)"

# On tmpfs an fsync returns at once, so both settings would measure the same thing.
fs_type="$(stat -f -c %T "$BENCH_DIR")"
case "$fs_type" in
  tmpfs | ramfs) echo "BENCH_DIR=$BENCH_DIR is on $fs_type; point it at a real disk." >&2; exit 1 ;;
esac

load1() { cut -d' ' -f1 /proc/loadavg; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Each run needs its own ports, and a run left over from another checkout (or the local
# runner on 4222/8080) must not be measured by mistake. The sockets stay open until all
# are chosen so the ports differ.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

wait_http() { # url pid name
  for _ in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || break
    if python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "$3 did not become ready at $1" >&2
  return 1
}

# A busy machine (a colleague's cargo build) skews one setting's runs more than the other's.
wait_for_quiet() {
  local waited=0
  while awk -v l="$(load1)" -v q="$QUIET_LOAD" 'BEGIN { exit !(l > q) }'; do
    if [ "$waited" -ge "$QUIET_WAIT_SECS" ]; then
      echo "  load is still $(loadavg) after ${waited}s; measuring anyway" >&2
      return 0
    fi
    sleep 5
    waited=$((waited + 5))
  done
}

pids=()
run_dir=""
stop_all() {
  # Services first so they finish in-flight work, NATS last.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  pids=()
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_all
  if [ -n "$run_dir" ] && [ -d "$run_dir" ]; then
    if [ "$status" -ne 0 ]; then
      for log in "$run_dir"/logs/*.log; do
        [ -f "$log" ] || continue
        echo "--- last lines of $log" >&2
        tail -n 5 "$log" >&2
      done
    fi
    rm -rf "$run_dir"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # name binary
  "$BIN/$2" >"$run_dir/logs/$1.log" 2>&1 &
  pids+=($!)
}

run_once() { # setting round
  local setting="$1" round="$2" nats_port monitor_port gateway_port sync_line="" want_always=false
  run_dir="$(mktemp -d "$BENCH_DIR/bench-durability.XXXXXX")"
  mkdir -p "$run_dir/logs"
  read -r nats_port monitor_port gateway_port < <(free_ports 3)
  if [ "$setting" != default ]; then sync_line="sync_interval: \"$setting\""; fi
  if [ "$setting" = always ]; then want_always=true; fi
  cat >"$run_dir/nats.conf" <<CONF
server_name: jetjobs-bench
listen: 127.0.0.1:$nats_port
http: 127.0.0.1:$monitor_port
max_payload: 2MB
jetstream {
  store_dir: "$run_dir/store"
  $sync_line
}
CONF

  "$NATS_SERVER_BIN" -c "$run_dir/nats.conf" >"$run_dir/logs/nats.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$monitor_port/healthz?js-enabled-only=true" "${pids[0]}" nats-server

  # A misspelt or unsupported key would silently leave the default in place.
  local got_always
  got_always="$(python3 -c '
import json, sys, urllib.request
varz = json.load(urllib.request.urlopen(sys.argv[1], timeout=2))
print(str(varz["jetstream"]["config"].get("sync_always", False)).lower())
' "http://127.0.0.1:$monitor_port/varz")"
  if [ "$got_always" != "$want_always" ]; then
    echo "nats-server reports sync_always=$got_always for setting '$setting'" >&2
    return 1
  fi

  export NATS_URL="nats://127.0.0.1:$nats_port" RUST_LOG="${RUST_LOG:-warn}"
  "$BIN/jetjobs-admin" provision >"$run_dir/logs/provision.log" 2>&1
  start status jetjobs-status
  start processor-io jetjobs-processor-io
  JETJOBS_LISTEN="127.0.0.1:$gateway_port" start gateway jetjobs-gateway
  wait_http "http://127.0.0.1:$gateway_port/readyz" "${pids[-1]}" jetjobs-gateway

  local loadgen=("$BIN/jetjobs-loadgen" --url "http://127.0.0.1:$gateway_port" --kind noop --json --no-progress)
  local tag="$setting-$round"
  # Connections, consumers and the page cache warm up on the first jobs of a fresh server.
  "${loadgen[@]}" -n "$WARMUP_JOBS" -c "$CONCURRENCY" >/dev/null
  "${loadgen[@]}" -n "$JOBS" -c "$CONCURRENCY" >"$RESULTS_DIR/$tag.c$CONCURRENCY.json"
  "${loadgen[@]}" -n "$SERIAL_JOBS" -c 1 >"$RESULTS_DIR/$tag.c1.json"

  stop_all
  rm -rf "$run_dir"
  run_dir=""
}

{
  echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit:      $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "server:      $("$NATS_SERVER_BIN" --version)"
  echo "cpu:         $(nproc) x $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)"
  echo "memory:      $(free -h 2>/dev/null | awk '/^Mem:/ { print $2 }')"
  echo "store fs:    $(df -T "$BENCH_DIR" | awk 'NR == 2 { print $1, $2 }') ($BENCH_DIR)"
  echo "workload:    noop, $JOBS jobs at c=$CONCURRENCY, then $SERIAL_JOBS at c=1; $WARMUP_JOBS warm-up jobs first"
} | tee "$RESULTS_DIR/machine.txt" >&2

: >"$RESULTS_DIR/load.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for setting in "${SETTINGS[@]}"; do
    wait_for_quiet
    before="$(loadavg)"
    echo "round $round/$ROUNDS, $setting: load before $before" >&2
    run_once "$setting" "$round"
    after="$(loadavg)"
    echo "  load after $after" >&2
    printf '%s\t%s\t%s\t%s\n' "$setting" "$round" "$before" "$after" >>"$RESULTS_DIR/load.tsv"
  done
done

python3 - "$RESULTS_DIR" "$CONCURRENCY" "${SETTINGS[@]}" <<'PY' | tee "$RESULTS_DIR/summary.md"
import json, statistics, sys
from pathlib import Path

results, concurrency, settings = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
load = {}
for line in (results / "load.tsv").read_text().splitlines():
    setting, rnd, before, after = line.split("\t")
    load[(setting, rnd)] = (before, after)

def row(summary):
    if not summary["complete"]:
        raise SystemExit(f"incomplete run: {summary}")
    s, e = summary["submit_latency_ms"], summary["e2e_latency_ms"]
    return [summary["e2e_throughput"], s["p50"], s["p99"], e["p50"], e["p99"]]

runs = {}
for setting in settings:
    for rnd in sorted({k[1] for k in load if k[0] == setting}, key=int):
        tag = f"{setting}-{rnd}"
        fast = json.loads((results / f"{tag}.c{concurrency}.json").read_text())
        serial = json.loads((results / f"{tag}.c1.json").read_text())
        runs.setdefault(setting, []).append((rnd, row(fast) + row(serial)))

head = (f"| setting | run | c={concurrency} jobs/s | submit p50 / p99 ms | end-to-end p50 / p99 ms "
        "| c=1 jobs/s | submit p50 / p99 ms | end-to-end p50 / p99 ms |")
rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"

def cells(v):
    return (f"{v[0]:,.0f} | {v[1]:.2f} / {v[2]:.2f} | {v[3]:.2f} / {v[4]:.2f} "
            f"| {v[5]:,.0f} | {v[6]:.2f} / {v[7]:.2f} | {v[8]:.2f} / {v[9]:.2f}")

medians = {s: [statistics.median(col) for col in zip(*(v for _, v in runs[s]))] for s in runs}
print("Medians (each column on its own):\n")
print(head)
print(rule)
for s in settings:
    print(f"| {s} | median of {len(runs[s])} | {cells(medians[s])} |")
if {"default", "always"} <= medians.keys():
    d, a = medians["default"], medians["always"]
    print(f"\nalways vs default: c={concurrency} throughput {a[0] / d[0]:.2f}x, "
          f"c=1 throughput {a[5] / d[5]:.2f}x, c=1 submit p50 {a[6] / d[6]:.2f}x")
print("\nAll runs, in the order they ran (load averages 1/5/15 min before -> after):\n")
print(head + " load |")
print(rule + " --- |")
order = sorted(((int(r), settings.index(s), s, r, v) for s in runs for r, v in runs[s]))
for _, _, s, r, v in order:
    before, after = load[(s, r)]
    print(f"| {s} | {r} | {cells(v)} | {before} -> {after} |")
PY
echo "Raw results: $RESULTS_DIR" >&2
