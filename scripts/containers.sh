#!/usr/bin/env bash
# Builds the project's CPU image with podman on a machine with no registry access (CI, tests).
#
#   scripts/containers.sh tools   install podman and friends (Debian packages; needs root)
#   scripts/containers.sh base    the stand-in for rayproject/ray: Debian bookworm from
#                                 Debian's packages (mmdebstrap), python3.11, user ray (uid 1000)
#   scripts/containers.sh image   the project's CPU image (docker/Dockerfile) on that base
#   scripts/containers.sh podman ARGS...   podman with this script's configuration
#
# Each step is skipped when its result exists, so a second run on the same machine costs seconds
# (the base tarball and podman's layer cache live under $DSBS_CONTAINER_CACHE).
# Users with registry access build docker/Dockerfile directly (README "Deploy on KubeRay").
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${DSBS_CONTAINER_CACHE:-$HOME/.cache/dsbs/containers}
BASE_IMAGE=${BASE_IMAGE:-localhost/dsbs-standin-ray:bookworm-py311}
IMAGE=${IMAGE:-localhost/dsbs:cpu-test}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
export CONTAINERS_CONF="$CACHE/containers.conf"
export CONTAINERS_STORAGE_CONF="$CACHE/storage.conf"

log() { echo "containers: $*" >&2; }

tools() {
  local missing=()
  for tool in podman runc mmdebstrap newuidmap slirp4netns fuse-overlayfs; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    log "installing podman runc uidmap slirp4netns fuse-overlayfs mmdebstrap (missing: ${missing[*]})"
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo -n)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      podman runc uidmap slirp4netns fuse-overlayfs mmdebstrap >/dev/null
  fi
  mkdir -p "$CACHE/storage" "$CACHE/run" "$CACHE/tmp"
  # crun cannot set rlimits in this kind of sandbox and its cgroups are hybrid: runc + cgroupfs.
  cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=4096:4096"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
image_copy_tmp_dir = "$CACHE/tmp"
EOF
  cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$CACHE/run"
EOF
}

base() {
  tools
  if podman image exists "$BASE_IMAGE"; then return; fi
  local tarball="$CACHE/base-bookworm.tar"
  if [ ! -s "$tarball" ]; then
    log "building the stand-in base from Debian's packages (mmdebstrap, about 3 minutes)"
    # What rayproject/ray gives an image built on it: python 3.11 with pip on PATH, user ray
    # (uid 1000, gid 100) owning it, /home/ray as the working directory. python3-dev stands in
    # for the headers that rayproject/ray's conda Python carries (DeepSpeed's CPU op needs them).
    mmdebstrap --quiet --variant=minbase --format=tar \
      --include=python3,python3-venv,python3-dev,ca-certificates,apt \
      --customize-hook='chroot "$1" useradd -m -d /home/ray -u 1000 -g 100 -s /bin/bash ray' \
      --customize-hook='chroot "$1" python3 -m venv /home/ray/anaconda3' \
      --customize-hook='chroot "$1" chown -R 1000:100 /home/ray' \
      bookworm "$tarball.part"
    mv "$tarball.part" "$tarball"
  fi
  log "importing $tarball as $BASE_IMAGE"
  podman import --quiet \
    --change 'ENV PATH=/home/ray/anaconda3/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV HOME=/home/ray' --change 'USER 1000' --change 'WORKDIR /home/ray' \
    "$tarball" "$BASE_IMAGE" >/dev/null
}

image() {
  base
  local mounts=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
  local args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  # Where this machine's pip finds the CPU torch wheel in a local folder (PIP_FIND_LINKS) rather
  # than on download.pytorch.org, the build looks there the same way.
  if [ -n "${PIP_FIND_LINKS:-}" ] && [ -d "$PIP_FIND_LINKS" ]; then
    mounts+=(-v "$PIP_FIND_LINKS:/opt/find-links:ro")
    args+=(--build-arg "PIP_FIND_LINKS=/opt/find-links" --build-arg "TORCH_INDEX_URL=")
  fi
  log "building $IMAGE from docker/Dockerfile (first time: several minutes)"
  # Step lines only: pip's and apt's own output would drown the log.
  podman build --network=host --layers "${mounts[@]}" "${args[@]}" \
    -f docker/Dockerfile -t "$IMAGE" . | grep --line-buffered -E '(STEP [0-9]|COMMIT|Using cache)' >&2
  log "built $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec))"
}

case "${1:-image}" in
  tools) tools ;;
  base) base ;;
  image) image ;;
  podman) shift; tools >/dev/null; exec podman "$@" ;;
  *) echo "usage: $0 [tools|base|image|podman ARGS...]" >&2; exit 2 ;;
esac
