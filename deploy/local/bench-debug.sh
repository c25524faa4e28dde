#!/usr/bin/env bash
# noop jobs through run.sh's system (prebuilt target/debug, own ports); CPU per job per process from /proc.
set -euo pipefail
export NATS_URL=nats://127.0.0.1:34222 NATS_PORT=34222 NATS_MONITOR_PORT=38222 JETJOBS_LISTEN=127.0.0.1:38080 STATUS_ADMIN_LISTEN=127.0.0.1:39101 PROCESSOR_IO_ADMIN_LISTEN=127.0.0.1:39102 PROCESSOR_CPU_ADMIN_LISTEN=127.0.0.1:39103 NOTIFIER_ADMIN_LISTEN=127.0.0.1:39104 RUN_DIR=/tmp/benchrun BIN_DIR=target/debug
rm -rf /tmp/benchrun
setsid ./deploy/local/run.sh >/tmp/bench-run.out 2>&1 &
RUN=$!
for i in $(seq 1 200); do curl -sf http://127.0.0.1:38080/readyz >/dev/null && break; sleep 0.2; done
cpu() { for n in jetjobs-gateway jetjobs-status jetjobs-processor-io nats-server; do p=$(pgrep -f "$n" | while read x; do grep -q "RUN_DIR=/tmp/benchrun" /proc/$x/environ 2>/dev/null && echo $x; done | head -1); awk -v n=$n '{print n, $14+$15}' /proc/$p/stat; done; }
N=${N:-5000}
./target/debug/jetjobs-loadgen --url http://127.0.0.1:38080 -n 500 >/dev/null 2>&1 || true
cpu > /tmp/cpu0
./target/debug/jetjobs-loadgen --url http://127.0.0.1:38080 -n $N -c 64 2>/tmp/loadgen.err | tee /tmp/loadgen.out || true
cpu > /tmp/cpu1
hz=$(getconf CLK_TCK)
paste /tmp/cpu0 /tmp/cpu1 | awk -v n=$N -v hz=$hz '{printf "%-22s %7.0f µs CPU/job\n", $1, ($4-$2)*1e6/hz/n}'
kill -TERM $RUN; wait $RUN || true
