#!/usr/bin/env bash
# Builds the compose image (jetjobs:latest, or $JETJOBS_IMAGE) from binaries that are
# already compiled, e.g. by the test step: `deploy/ci/image-from-binaries.sh target/debug`.
# The binaries must be linked for the runtime image's glibc (Debian bookworm), as they are
# on this project's machines.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN_DIR="${1:?usage: $0 <directory with the jetjobs-* binaries>}"
IMAGE="${JETJOBS_IMAGE:-jetjobs:latest}"
context="target/image-bins"
rm -rf "$context"
mkdir -p "$context"
for bin in jetjobs-gateway jetjobs-status jetjobs-notifier jetjobs-processor-io \
           jetjobs-processor-cpu jetjobs-admin jetjobs-loadgen jetjobs; do
  [ -x "$BIN_DIR/$bin" ] || { echo "missing $BIN_DIR/$bin: build the workspace first" >&2; exit 1; }
  # Debug info is most of a debug binary's size; symbols stay, so panics name functions.
  strip --strip-debug -o "$context/$bin" "$BIN_DIR/$bin"
done
du -sh "$context" >&2
docker build -q -f deploy/docker/Dockerfile.prebuilt -t "$IMAGE" "$context" >&2
docker image ls "$IMAGE" >&2
