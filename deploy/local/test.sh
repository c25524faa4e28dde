#!/usr/bin/env bash
# Runs the whole test suite against real nats-server processes.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/nats-server.sh
echo "Using $("$NATS_SERVER_BIN" --version) at $NATS_SERVER_BIN" >&2
# The crash and fault-injection tests start the real service binaries, so build them
# first (with the gateway's failpoints, which only the tests switch on). With the test
# targets in the same build, the binaries and the tests share one feature resolution:
# `cargo test` below then compiles nothing again (`--bins` alone resolved features
# without the dev-dependencies, and every crate was compiled twice).
cargo build --workspace --all-targets --all-features
cargo test --workspace --all-features "$@"
