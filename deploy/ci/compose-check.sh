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

python3 deploy/ci/compose_test.py
if [ "${JETJOBS_CI_CLUSTER:-0}" = 1 ]; then
  python3 deploy/ci/compose_test.py --cluster --no-build
fi
