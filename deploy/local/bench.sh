#!/usr/bin/env bash
# The benchmark (issue 11): release binaries, a fresh nats-server, every workload and the
# raw JetStream floor in one run. Arguments go to deploy/local/bench.py (--quick,
# --write-docs, --keep); PROFILE=perf (default) or release picks the build.
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE="${PROFILE:-perf}"
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --profile "$PROFILE" --workspace --bins
  BIN_DIR="target/$PROFILE"
fi
. deploy/local/nats-server.sh
BIN_DIR="$BIN_DIR" exec python3 deploy/local/bench.py "$@"
