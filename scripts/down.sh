#!/usr/bin/env bash
# `make down`: removes what scripts/up.sh (`make up`) made: its containers and network.
# HA=1 (`make down HA=1`): what `make up HA=1` made instead: every container and the network
# labelled koinonia.stack=local-ha (scripts/up.sh labels them); the demo certificates in
# .cache/local-ha are kept (delete that directory to start over).
# The apt download cache (KOINONIA_APT_CACHE) is kept so the next `make up` is faster.
set -euo pipefail
HA="${HA:-0}"
if [ "$HA" = 1 ]; then
  mapfile -t HOSTS < <(docker ps -a --filter label=koinonia.stack=local-ha --format '{{.Names}}' | sort)
  mapfile -t NETWORKS < <(docker network ls --filter label=koinonia.stack=local-ha --format '{{.Name}}')
else
  HOSTS=(koinonia-lb koinonia-app1 koinonia-app2 koinonia-app3 koinonia-db koinonia-redis)
  NETWORKS=(koinonia-local)
fi
for name in "${HOSTS[@]}"; do
  if docker inspect "$name" >/dev/null 2>&1; then
    docker rm -f "$name" >/dev/null && echo "$name: removed"
  fi
done
for network in "${NETWORKS[@]}"; do
  if docker network inspect "$network" >/dev/null 2>&1; then
    docker network rm "$network" >/dev/null && echo "network $network: removed"
  fi
done
if [ "$HA" = 1 ]; then echo "make down HA=1: done"; else echo "make down: done"; fi
