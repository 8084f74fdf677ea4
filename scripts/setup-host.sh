#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian 12 machine (run as root):
# the Debian packages the tests use, and a running Docker engine.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Servers the service's tests start on loopback, debootstrap for the base image,
# wrk and pgbench (postgresql-contrib) for the benchmarks, apt-cacher-ng for the containers,
# lua-check (luacheck) and the shell linter for make lint, chromium (and a font for its
# screenshots) for the docs page test in a real browser (molecule/default).
packages=(debootstrap postgresql-15 postgresql-contrib pgbouncer redis-server
          wrk python3-venv curl ca-certificates apt-cacher-ng shellcheck lua-check
          chromium fonts-liberation)
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

# One cache of Debian packages for every test container (molecule/resources/prepare.yml and
# scripts/up.sh point apt at it when it answers): each package and package list is fetched
# from the mirror once per machine, not once per container. It listens on docker0's address
# only, which containers reach as koinonia-apt-cache (host-gateway). Our own configuration,
# without the package's remaps: it caches the URLs apt asks for, nothing else.
acng_dir=/var/cache/koinonia-apt-cacher-ng
acng_address=$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)
acng_answers() { curl -s -o /dev/null --max-time 2 "http://$acng_address:3142/acng-report.html"; }
if [ -z "$acng_address" ]; then
  echo "no docker0 address: the containers fetch Debian packages from the mirror"
elif acng_answers; then
  echo "apt cache answers on $acng_address:3142"
else
  mkdir -p "$acng_dir/conf" "$acng_dir/cache" "$acng_dir/log"
  cat > "$acng_dir/conf/acng.conf" <<ACNG
CacheDir: $acng_dir/cache
LogDir: $acng_dir/log
SupportDir: /usr/lib/apt-cacher-ng
Port: 3142
BindAddress: $acng_address
PidFile: /run/koinonia-apt-cacher-ng.pid
ReportPage: acng-report.html
ExThreshold: 4
ACNG
  /usr/sbin/apt-cacher-ng -c "$acng_dir/conf" ForeGround=0
  for _ in $(seq 1 20); do acng_answers && break; sleep 0.5; done
  acng_answers && echo "apt cache started on $acng_address:3142 ($acng_dir)" \
    || echo "apt cache did not start: the containers fetch Debian packages from the mirror"
fi
