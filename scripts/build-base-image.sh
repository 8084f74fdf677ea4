#!/usr/bin/env bash
# Builds the Debian images that Molecule and `make up` boot with systemd as PID 1:
# koinonia/debian<N>-systemd for N = 13 (trixie) and/or 12 (bookworm).
#   scripts/build-base-image.sh 13 12   both, side by side (make setup)
#   DEBIAN=12 scripts/build-base-image.sh   one (default: DEBIAN, else 13)
#
# No container registry is reachable from our machines, so nothing can be pulled:
# the image is made with debootstrap and `docker import`. It is tagged with a hash of
# this script, so a changed recipe builds a new image and an unchanged one is reused.
set -euo pipefail

if [ $# -gt 1 ]; then
  pids=()
  for release in "$@"; do DEBIAN=$release "$0" & pids+=($!); done
  rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  exit $rc
fi
[ $# -eq 1 ] && DEBIAN=$1

MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN="${DEBIAN:-13}"
case "$DEBIAN" in
  12) SUITE=bookworm ;;
  13) SUITE=trixie ;;
  *) echo "DEBIAN=$DEBIAN: supported releases are 12 (bookworm) and 13 (trixie)" >&2; exit 2 ;;
esac
PACKAGES=(
  python3 python3-apt systemd systemd-sysv dbus
  iproute2 procps ca-certificates sudo gnupg locales less
)
recipe_hash=$( { cat "$0"; echo "$MIRROR $SUITE"; } | sha256sum | cut -c1-12)
tag="koinonia/debian${DEBIAN}-systemd:${recipe_hash}"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag already built"
else
  workdir=$(mktemp -d /var/tmp/koinonia-rootfs.XXXXXX)
  trap 'rm -rf "$workdir"' EXIT
  echo "debootstrap $SUITE from $MIRROR into $workdir"
  debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    "$SUITE" "$workdir/rootfs" "$MIRROR" >"$workdir/debootstrap.log" 2>&1 \
    || { tail -n 40 "$workdir/debootstrap.log"; exit 1; }
  rootfs="$workdir/rootfs"
  # Same sources as a stock Debian host: main, updates and security.
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
  # A container has no consoles or hardware: mask the units that would wait for them.
  for unit in getty.target console-getty.service systemd-udevd.service \
              systemd-udev-trigger.service systemd-remount-fs.service \
              systemd-firstboot.service sys-kernel-debug.mount dev-hugepages.mount; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
  done
  echo 'en_US.UTF-8 UTF-8' >"$rootfs/etc/locale.gen"
  chroot "$rootfs" locale-gen >/dev/null
  : >"$rootfs/etc/machine-id"
  # As Debian's own container images are made (debuerreotype): dpkg does not fsync every
  # file it unpacks (a container is thrown away, not power-cycled), and apt fetches no
  # translated package descriptions. The suite installs the stack's packages into dozens of
  # containers on two cores; what the roles install and configure is unchanged.
  echo 'force-unsafe-io' >"$rootfs/etc/dpkg/dpkg.cfg.d/koinonia-container"
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/10koinonia-container"
  # The package lists as of the build, with apt's parsed cache: a container's first
  # `apt-get update` then asks the mirror only what changed since (the indexes of a stable
  # release change rarely), instead of fetching, unpacking and parsing them all again.
  # The roles still update lists older than their cache_valid_time, as on any host.
  chroot "$rootfs" apt-get update -qq >"$workdir/apt-update.log" 2>&1 \
    || { tail -n 20 "$workdir/apt-update.log"; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | docker import \
    -c 'CMD ["/sbin/init"]' -c 'ENV container=docker' \
    - "$tag" >/dev/null
  echo "built base image $tag"
fi
docker tag "$tag" "koinonia/debian${DEBIAN}-systemd:latest"
