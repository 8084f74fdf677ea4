#!/usr/bin/env bash
# `make down`: removes what scripts/up.sh (`make up`) made: its containers and network.
# The apt download cache (KOINONIA_APT_CACHE) is kept so the next `make up` is faster.
set -euo pipefail
NETWORK=koinonia-local
HOSTS=(koinonia-lb koinonia-app1 koinonia-app2 koinonia-app3 koinonia-db koinonia-redis)
for name in "${HOSTS[@]}"; do
  if docker inspect "$name" >/dev/null 2>&1; then
    docker rm -f "$name" >/dev/null && echo "$name: removed"
  fi
done
if docker network inspect "$NETWORK" >/dev/null 2>&1; then
  docker network rm "$NETWORK" >/dev/null && echo "network $NETWORK: removed"
fi
echo "make down: done"
