#!/usr/bin/env bash
# The compose part of CI (after deploy/ci/prepare-airgapped.sh):
#   1. `docker compose config` of every compose file and profile: catches a broken file,
#      also for the profiles CI cannot start (their images are not available offline);
#   2. the end-to-end compose test of the real docker-compose.yml
#      (deploy/ci/compose_test.py: build, every kind, permissions, scale-out, NATS
#      restart, teardown). Set JETJOBS_CI_CLUSTER=1 to also run it on the cluster variant.
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "compose-check: validating compose files" >&2
docker compose -f docker-compose.yml config -q
docker compose -f docker-compose.yml --profile tools --profile observability config -q
docker compose -f docker-compose.yml -f docker-compose.cluster.yml config -q

# JETJOBS_CI_PREBUILT=<dir>: the image is made from the binaries in <dir> (the test step
# compiled them already) instead of compiling the workspace a second time inside Docker.
build_flag=()
if [ -n "${JETJOBS_CI_PREBUILT:-}" ]; then
  ./deploy/ci/image-from-binaries.sh "$JETJOBS_CI_PREBUILT"
  build_flag=(--no-build)
fi
python3 deploy/ci/compose_test.py "${build_flag[@]}"
if [ "${JETJOBS_CI_CLUSTER:-0}" = 1 ]; then
  python3 deploy/ci/compose_test.py --cluster --no-build
fi
