#!/usr/bin/env bash
# `make up`: the whole Koinonia stack on local containers, deployed by site.yml.
#
#   koinonia-lb      NGINX + TLS (self-signed)    127.0.0.1:8443 -> 443, 127.0.0.1:8080 -> 80
#   koinonia-app1..3 API (Hypercorn :3000) + SAQ worker
#   koinonia-db      PostgreSQL + PgBouncer (:6432)
#   koinonia-redis   Redis
#
# DEBIAN=13 (trixie, the default: PostgreSQL 17, Redis 8) or DEBIAN=12 (bookworm: PostgreSQL
# 15, Redis 7). Containers are made exactly like the Molecule hosts
# (molecule/resources/create.yml): Debian with systemd as PID 1, on the docker network "koinonia-local", then deployed
# with `ansible-playbook site.yml -i inventories/local` (DEMO passwords: inventories/local/README.md).
# Re-running it reuses the containers and re-applies the playbook (nothing changes).
# `make down` (scripts/down.sh) removes everything.
#
# KOINONIA_UP_SKIP_LB=1 deploys everything but the load balancer.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN="${DEBIAN:-13}"
case "$DEBIAN" in
  12|13) ;;
  *) echo "DEBIAN=$DEBIAN: the stack runs on Debian 13 (the default) or 12 (DEBIAN=12)" >&2; exit 2 ;;
esac
IMAGE="koinonia/debian${DEBIAN}-systemd:latest"
NETWORK=koinonia-local
APT_CACHE="${KOINONIA_APT_CACHE:-/var/cache/koinonia-molecule-apt}"
LB=koinonia-lb
HOSTS=(koinonia-db koinonia-redis koinonia-app1 koinonia-app2 koinonia-app3 "$LB")
INVENTORY=inventories/local
PUBLIC_URL=https://127.0.0.1:8443
export PATH="$PWD/.venv/bin:$PATH"

say() { printf '\n==> %s\n' "$*"; }

command -v docker >/dev/null || { echo "docker is required (make setup installs it)"; exit 1; }
command -v ansible-playbook >/dev/null || { echo "ansible-playbook not found (make setup builds .venv)"; exit 1; }
docker image inspect "$IMAGE" >/dev/null 2>&1 || DEBIAN=$DEBIAN scripts/build-base-image.sh

# systemd in every container takes inotify instances, all counted against root's limit on
# this machine (128 by default). Past it, a container hangs in "initializing" and its
# journal says "Failed to create inotify object: Too many open files".
inotify_limit=$(cat /proc/sys/fs/inotify/max_user_instances 2>/dev/null || echo 0)
if [ "$inotify_limit" -lt 512 ]; then
  echo "note: fs.inotify.max_user_instances is $inotify_limit; with many systemd containers"
  echo "      running (Molecule too), raise it: sysctl -w fs.inotify.max_user_instances=1024"
fi

say "network $NETWORK"
docker network inspect "$NETWORK" >/dev/null 2>&1 || docker network create "$NETWORK" >/dev/null

start_container() {
  local name=$1; shift
  if [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" = true ]; then
    local image
    image=$(docker inspect -f '{{.Config.Image}}' "$name")
    if [ "$image" != "$IMAGE" ]; then
      echo "$name runs $image, not $IMAGE: remove the stack first (make down), then make up DEBIAN=$DEBIAN" >&2
      exit 2
    fi
    echo "$name: running"
    return
  fi
  docker rm -f "$name" >/dev/null 2>&1 || true
  # Fresh container: this run's site.yml is a first converge (bench/deploy.py reads it).
  touch "$STARTED_MARK"
  mkdir -p "$APT_CACHE/$name/partial"
  # Same recipe as molecule/resources/create.yml (--privileged is not available here).
  docker run -d --name "$name" --hostname "$name" --network "$NETWORK" \
    --cap-add SYS_ADMIN --cap-add NET_ADMIN \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
    --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
    -v "$APT_CACHE/$name:/var/cache/apt/archives" --add-host koinonia-apt-cache:host-gateway \
    --stop-signal SIGRTMIN+3 -e container=docker "$@" \
    "$IMAGE" /sbin/init >/dev/null
  echo "$name: started"
}

say "containers"
# Wall time of site.yml goes to .cache/bench/deploy.json (`make bench` reports it): a run that
# started any container is a first converge, otherwise a re-run.
STARTED_MARK=$(mktemp /tmp/koinonia-up-started.XXXXXX) && rm -f "$STARTED_MARK"
for name in "${HOSTS[@]}"; do
  if [ "$name" = "$LB" ]; then
    start_container "$name" -p 127.0.0.1:8443:443 -p 127.0.0.1:8080:80
  else
    start_container "$name"
  fi
done

say "waiting for systemd in each container; test-only drop-in; apt lists"
prepare() {
  local name=$1 state="" deadline=$((SECONDS + 300))
  # Right after `docker run`, systemctl may not reach systemd yet (empty answer): retry,
  # for 5 minutes at most.
  while [ $SECONDS -lt $deadline ]; do
    state=$(timeout $((deadline - SECONDS)) docker exec "$name" systemctl is-system-running --wait 2>/dev/null || true)
    case "$state" in running|degraded) break;; esac
    sleep 2
  done
  case "$state" in
    running|degraded) ;;
    *) echo "$name: systemd did not boot ($state)"
       docker exec "$name" journalctl --no-pager -n 200 2>/dev/null | grep -m1 'Too many open files' \
         && echo "$name: out of inotify instances: sysctl -w fs.inotify.max_user_instances=1024"
       return 1;;
  esac
  # The same test-only drop-in as molecule/resources/prepare.yml: this sandbox cannot mount
  # /proc with hidepid in a user namespace, so units combining PrivateUsers= with
  # ProtectProc=invisible would fail with 217/USER. Only these local containers relax it.
  # Debian packages come through the machine's apt cache when it answers (scripts/setup-host.sh).
  docker exec "$name" sh -c '
    mkdir -p /etc/systemd/system/service.d &&
    printf "%s\n" "# Local containers only (scripts/up.sh, as molecule/resources/prepare.yml)." \
      "[Service]" "ProtectProc=default" > /etc/systemd/system/service.d/10-test-sandbox.conf &&
    systemctl daemon-reload &&
    if timeout 2 bash -c "</dev/tcp/koinonia-apt-cache/3142" 2>/dev/null; then
      echo "Acquire::http::Proxy \"http://koinonia-apt-cache:3142\";" \
        > /etc/apt/apt.conf.d/01koinonia-test-apt-cache
    else rm -f /etc/apt/apt.conf.d/01koinonia-test-apt-cache; fi &&
    { [ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ] || apt-get update -qq; }'
  echo "$name: ready"
}
pids=()
for name in "${HOSTS[@]}"; do prepare "$name" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid"; done

say "ansible-playbook site.yml -i $INVENTORY"
skip=()
if [ "${KOINONIA_UP_SKIP_LB:-0}" = 1 ] || [ ! -f roles/nginx/tasks/main.yml ]; then
  skip=(--skip-tags nginx)
  echo "(the load balancer is skipped: KOINONIA_UP_SKIP_LB=1 or roles/nginx missing)"
fi
lb_ok=1
deploy_kind=rerun
[ ! -e "$STARTED_MARK" ] || deploy_kind=first_converge
rm -f "$STARTED_MARK"
deploy_start=$(date +%s.%N)
record_deploy() {  # KIND EXIT_CODE: bench/deploy.py reads .cache/bench/deploy.json
  python3 - "$1" "$2" "$deploy_start" "$(date +%s.%N)" "${#skip[@]}" <<'PY' || true
import json, os, sys, time
kind, rc, start, end, skipped = sys.argv[1:]
path = os.path.join(".cache", "bench", "deploy.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
try:
    data = json.load(open(path))
except (OSError, ValueError):
    data = {}
data[kind] = {"seconds": round(float(end) - float(start), 1), "exit_code": int(rc),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(end))),
              "load_balancer_skipped": skipped != "0", "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "source": "scripts/up.sh"}
json.dump(data, open(path, "w"), indent=2)
PY
}
deploy_rc=0
ANSIBLE_STDOUT_CALLBACK=ansible.builtin.default ansible-playbook site.yml -i "$INVENTORY" "${skip[@]}" || deploy_rc=$?
record_deploy "$deploy_kind" "$deploy_rc"
if [ "$deploy_rc" -ne 0 ]; then
  # Which tier failed? If the app servers are ready, only the balancer is missing.
  if docker exec koinonia-app1 python3 -c \
      'import urllib.request,sys; sys.exit(urllib.request.urlopen("http://127.0.0.1:3000/health/ready", timeout=5).status != 200)' \
      2>/dev/null; then
    lb_ok=0
  else
    echo "site.yml failed before the app servers were ready: see the output above"
    exit 1
  fi
fi
[ ${#skip[@]} -eq 0 ] || lb_ok=0

vars() { awk -F': ' -v k="$1" '$1 == k {print $2}' "$INVENTORY/group_vars/all.yml"; }
owner_email=$(vars koinonia_demo_owner_email)
owner_password=$(vars koinonia_demo_owner_password)
operator_email=$(vars koinonia_demo_operator_email)
operator_password=$(vars koinonia_demo_operator_password)

if [ $lb_ok = 1 ] && curl -sk -o /dev/null -w '%{http_code}' --max-time 10 "$PUBLIC_URL/health" | grep -q 200; then
  say "Koinonia is up: $PUBLIC_URL  (self-signed certificate: curl -k, or accept it in the browser)"
  cat <<TXT
Demo accounts (DEMO passwords from $INVENTORY/group_vars/all.yml):
  church owner   $owner_email / $owner_password
  operator       $operator_email / $operator_password

Try it:
  curl -k $PUBLIC_URL/health/detailed
  TOKEN=\$(curl -sk $PUBLIC_URL/api/auth/login -H 'Content-Type: application/json' \\
      -d '{"email": "$owner_email", "password": "$owner_password"}' \\
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  curl -k $PUBLIC_URL/api/auth/me -H "Authorization: Bearer \$TOKEN"
  curl -k $PUBLIC_URL/api/members -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
      -d '{"firstName": "Ruth", "phone": "+12025550100"}'

Remove it all with: make down
TXT
else
  say "App servers, database and Redis are up; the load balancer is PENDING"
  cat <<TXT
$PUBLIC_URL does not answer yet (roles/nginx / loadbalancer.yml not deployed or failing).
Meanwhile the API answers inside the containers, e.g.:
  docker exec koinonia-app1 python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:3000/health/detailed").read().decode())'
Demo accounts: $owner_email / $owner_password (church owner), $operator_email / $operator_password (operator).
Remove it all with: make down
TXT
  exit 2
fi
