#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian 12 machine (run as root):
# the Debian packages the tests use, and a running Docker engine.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Servers the service's tests start on loopback, debootstrap for the base image,
# wrk and pgbench (postgresql-contrib) for the benchmarks.
packages=(debootstrap postgresql-15 postgresql-contrib pgbouncer redis-server
          wrk python3-venv curl ca-certificates)
docker_answers() { timeout 10 docker info >/dev/null 2>&1; }
docker_answers || command -v dockerd >/dev/null || packages+=(docker.io)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # No init system runs here: keep the packages' own services from starting.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
else
  echo "Debian packages present"
fi

# Each systemd container holds inotify instances, all counted against one per-user limit:
# Debian's default of 128 runs out with a few scenarios' containers up ("Too many open files"
# while booting), and make test runs several scenarios (7 containers each) at once.
if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt 4096 ]; then
  sysctl -qw fs.inotify.max_user_instances=4096
  echo "raised fs.inotify.max_user_instances to 4096"
fi

if docker_answers; then
  echo "docker engine answers"
else
  echo "starting dockerd"
  nohup dockerd >/var/log/koinonia-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker_answers && break; sleep 1; done
  docker_answers || { tail -n 30 /var/log/koinonia-dockerd.log; echo "dockerd did not start"; exit 1; }
  echo "docker engine started"
fi
