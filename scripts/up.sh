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
# HA=1 (`make up HA=1`, Debian 13): the high-availability stack instead, seven
# containers named koinonia-ha-* on the network koinonia-local-ha, deployed with
# `ansible-playbook site.yml -i inventories/local-ha`, which also describes the containers
# (fixed addresses, ports published on 127.0.0.1: 9443 and 9444, so both stacks can run at
# once; inventories/local-ha/README.md). It prints the URLs and one line of health read from
# the stack: the Patroni leader, the Redis master, the balancer holding the virtual address.
# `make down HA=1` removes it.
#
# KOINONIA_UP_SKIP_LB=1 deploys everything but the load balancer.
# --check-args: only validate DEBIAN and HA (the Makefile does it before `make setup`).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN="${DEBIAN:-13}"
HA="${HA:-0}"
case "$DEBIAN" in
  12|13) ;;
  *) echo "DEBIAN=$DEBIAN: the stack runs on Debian 13 (the default) or 12 (DEBIAN=12)" >&2; exit 2 ;;
esac
case "$HA" in
  0|"") HA=0 ;;
  1) if [ "$DEBIAN" != 13 ]; then
       echo "HA=1 DEBIAN=$DEBIAN: the high-availability stack is brought up on Debian 13 only. Its roles" >&2
       echo "support Debian 12 too (molecule's ha-database and ha-balancer), the whole stack is untried there." >&2
       exit 2
     fi ;;
  *) echo "HA=$HA: HA=1 brings up the high-availability stack, HA=0 (the default) the single-node one" >&2; exit 2 ;;
esac
[ "${1:-}" != --check-args ] || exit 0
IMAGE="koinonia/debian${DEBIAN}-systemd:latest"
APT_CACHE="${KOINONIA_APT_CACHE:-/var/cache/koinonia-molecule-apt}"
export PATH="$PWD/.venv/bin:$PATH"
if [ "$HA" = 1 ]; then
  STACK=local-ha
  INVENTORY=inventories/local-ha
  # Filled from the inventory below (read_ha_inventory).
  NETWORK="" SUBNET="" LB="" APP1="" PUBLIC_URL="" HOSTS=()
  declare -A HOST_ARGS=()
else
  STACK=local
  NETWORK=koinonia-local
  SUBNET=""
  LB=koinonia-lb
  APP1=koinonia-app1
  HOSTS=(koinonia-db koinonia-redis koinonia-app1 koinonia-app2 koinonia-app3 "$LB")
  declare -A HOST_ARGS=([$LB]="-p 127.0.0.1:8443:443 -p 127.0.0.1:8080:80")
  INVENTORY=inventories/local
  PUBLIC_URL=https://127.0.0.1:8443
fi

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

# The HA stack's containers, as inventories/local-ha describes them: the network and its
# subnet, each host's fixed address and published ports, the first balancer, the public URL
# and the virtual address.
read_ha_inventory() {
  local kind a b
  while read -r kind a b; do
    case "$kind" in
      network) NETWORK=$a SUBNET=$b ;;
      url) PUBLIC_URL=$a ;;
      vip) VIRTUAL_ADDRESS=$a ;;
      lb) LB=$a ;;
      app) APP1=$a ;;
      repo) BACKUP_REPO=$a ;;
      host) HOSTS+=("$a"); HOST_ARGS[$a]=$b ;;
    esac
  done < <(ansible-inventory -i "$INVENTORY" --list 2>/dev/null | python3 -c '
import json, sys
inventory = json.load(sys.stdin)
hostvars = inventory["_meta"]["hostvars"]
def hosts(group):
    found = list(inventory.get(group, {}).get("hosts", []))
    for child in inventory.get(group, {}).get("children", []):
        found += [h for h in hosts(child) if h not in found]
    return found
order = []
for group in ("patroni", "etcd", "redis", "pgbackrest_repo", "app_servers", "loadbalancers"):
    order += [h for h in hosts(group) if h not in order]
first = hostvars[order[0]]
print("network", first["koinonia_local_network"], first["koinonia_local_subnet"])
print("url", first["koinonia_public_url"])
lbs = hosts("loadbalancers")
print("vip", hostvars[lbs[0]].get("keepalived_virtual_address", ""))
print("lb", lbs[0])
print("app", hosts("app_servers")[0])
print("repo", (hosts("pgbackrest_repo") or [""])[0])
for name in order:
    args = ["--ip", hostvars[name]["koinonia_local_address"]]
    for port in hostvars[name].get("koinonia_local_published_ports", []):
        args += ["-p", port]
    print("host", name, " ".join(args))
')
  [ ${#HOSTS[@]} -gt 0 ] || { echo "could not read the containers from $INVENTORY (ansible-inventory)" >&2; exit 1; }
}
VIRTUAL_ADDRESS="" BACKUP_REPO=""
[ "$HA" = 0 ] || read_ha_inventory

# The other stack's containers may run too (their names and ports differ); only a host port
# taken by something else stops this one.
for port in $(printf '%s\n' "${HOST_ARGS[@]}" | grep -o '127\.0\.0\.1:[0-9]*' | cut -d: -f2); do
  owner=$(docker ps --filter "publish=$port" --format '{{.Names}}' | head -n1)
  if [ -n "$owner" ] && [ -z "${HOST_ARGS[$owner]+set}" ]; then
    echo "127.0.0.1:$port is published by the container $owner, not by this stack: stop it first" >&2
    exit 2
  fi
done

say "network $NETWORK${SUBNET:+ ($SUBNET)}"
if ! docker network inspect "$NETWORK" >/dev/null 2>&1; then
  docker network create --label "koinonia.stack=$STACK" ${SUBNET:+--subnet "$SUBNET"} "$NETWORK" >/dev/null
fi

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
  # A stopped container of the HA stack (after a reboot) starts again with its data: its etcd
  # member, its PostgreSQL and its Redis rejoin the others; a new one would not.
  if [ "$HA" = 1 ] && docker inspect "$name" >/dev/null 2>&1; then
    docker start "$name" >/dev/null
    echo "$name: started again"
    return
  fi
  docker rm -f "$name" >/dev/null 2>&1 || true
  # Fresh container: this run's site.yml is a first converge (bench/deploy.py reads it).
  touch "$STARTED_MARK"
  mkdir -p "$APT_CACHE/$name/partial"
  # Same recipe as molecule/resources/create.yml (--privileged is not available here).
  docker run -d --name "$name" --hostname "$name" --network "$NETWORK" \
    --label "koinonia.stack=$STACK" \
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
  read -ra args <<< "${HOST_ARGS[$name]:-}"
  start_container "$name" "${args[@]}"
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

if [ "$HA" = 1 ]; then
  # pgBackRest's TLS server and its clients need certificates: a throw-away CA and one
  # certificate per host, made once on this machine (the playbook the pgBackRest scenarios
  # share; its certificates are for a demo stack, never for production).
  say "pgBackRest's demo certificates in .cache/local-ha/pgbackrest-tls"
  ANSIBLE_STDOUT_CALLBACK=ansible.builtin.default ansible-playbook molecule/resources/pgbackrest-tls.yml \
    -i "$INVENTORY" -e "koinonia_test_pgbackrest_tls_dir=$PWD/.cache/local-ha/pgbackrest-tls"
fi

say "ansible-playbook site.yml -i $INVENTORY"
skip=()
if [ "${KOINONIA_UP_SKIP_LB:-0}" = 1 ] || [ ! -f roles/nginx/tasks/main.yml ]; then
  skip=(--skip-tags nginx --skip-tags keepalived)
  echo "(the load balancer is skipped: KOINONIA_UP_SKIP_LB=1 or roles/nginx missing)"
fi
lb_ok=1
deploy_kind=rerun
[ ! -e "$STARTED_MARK" ] || deploy_kind=first_converge
[ "$HA" = 0 ] || deploy_kind=ha_$deploy_kind
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
deploy_seconds=$(python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1])))' "$deploy_start" "$(date +%s.%N)")
if [ "$deploy_rc" -ne 0 ]; then
  # Which tier failed? If the app servers are ready, only the balancer is missing.
  if docker exec "$APP1" python3 -c \
      'import urllib.request,sys; sys.exit(urllib.request.urlopen("http://127.0.0.1:3000/health/ready", timeout=5).status != 200)' \
      2>/dev/null; then
    lb_ok=0
  else
    echo "site.yml failed before the app servers were ready: see the output above"
    exit 1
  fi
fi
[ ${#skip[@]} -eq 0 ] || lb_ok=0

# HA: the backup timers take the first full backup on the next Sunday; until then there is
# nothing to recover from (and playbooks/verify.yml says so). Take it now if there is none.
if [ "$HA" = 1 ] && [ "$deploy_rc" -eq 0 ] && [ -n "$BACKUP_REPO" ]; then
  if docker exec "$BACKUP_REPO" pgbackrest --stanza=koinonia info --output=json 2>/dev/null \
      | python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)[0]["backup"] else 1)'; then
    echo "pgBackRest: the repository on $BACKUP_REPO has a backup"
  else
    say "the first full backup into the pgBackRest repository on $BACKUP_REPO"
    timeout 900 docker exec "$BACKUP_REPO" systemctl start pgbackrest-backup-full.service \
      && echo "pgBackRest: full backup taken" \
      || echo "pgBackRest: the full backup failed: docker exec $BACKUP_REPO journalctl -u pgbackrest-backup-full"
  fi
fi

vars() { awk -F': ' -v k="$1" '$1 == k {print $2}' "$INVENTORY/group_vars/all.yml"; }
owner_email=$(vars koinonia_demo_owner_email)
owner_password=$(vars koinonia_demo_owner_password)
operator_email=$(vars koinonia_demo_operator_email)
operator_password=$(vars koinonia_demo_operator_password)

DOWN="make down"
[ "$HA" = 0 ] || DOWN="make down HA=1"

# HA: one line of health read from the running stack. Passwords go through stdin, never
# into a process's arguments.
patroni_summary() {
  docker exec "${HOSTS[0]}" python3 -c '
import json, urllib.request
members = json.load(urllib.request.urlopen("http://127.0.0.1:8008/cluster", timeout=5))["members"]
leaders = [m["name"] for m in members if m["role"] == "leader"]
replicas = ["%s %s, lag %s" % (m["name"], m["state"], m.get("lag", "?")) for m in members if m["role"] != "leader"]
print("Patroni leader %s (replicas: %s)" % (",".join(leaders) or "NONE", "; ".join(replicas) or "none"))
' 2>/dev/null || echo "Patroni: no answer from ${HOSTS[0]}:8008"
}
redis_summary() {
  local sentinel_host
  sentinel_host=$(printf '%s\n' "${HOSTS[@]}" | grep -m1 witness || echo "${HOSTS[0]}")
  vars koinonia_redis_sentinel_password | docker exec -i "$sentinel_host" sh -c '
    read -r REDISCLI_AUTH; export REDISCLI_AUTH
    master=$(redis-cli -p 26379 --no-auth-warning SENTINEL get-master-addr-by-name koinonia | head -n1)
    replicas=$(redis-cli -p 26379 --no-auth-warning SENTINEL replicas koinonia | grep -c "^flags$" || true)
    sentinels=$(redis-cli -p 26379 --no-auth-warning SENTINEL sentinels koinonia | grep -c "^flags$" || true)
    echo "Redis master ${master:-NONE} ($replicas replicas, $((sentinels + 1)) Sentinels)"' 2>/dev/null \
    || echo "Redis: no answer from the Sentinel on $sentinel_host"
}
keepalived_summary() {
  local holders=() name
  for name in "${HOSTS[@]}"; do
    if docker exec "$name" ip -4 -o addr show 2>/dev/null | grep -q " $VIRTUAL_ADDRESS/"; then holders+=("$name"); fi
  done
  echo "virtual address $VIRTUAL_ADDRESS held by ${holders[*]:-NOBODY}"
}
# The API through the balancer: ready, a login (a session written to the Redis master), the
# owner's account and members read back (PostgreSQL through HAProxy to the leader).
api_smoke() {
  local url=$1 code token
  code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 "$url/health/ready")
  echo "GET $url/health/ready -> $code"
  [ "$code" = 200 ] || return 1
  token=$(printf '{"email": "%s", "password": "%s"}' "$owner_email" "$owner_password" \
    | curl -sk --max-time 10 "$url/api/auth/login" -H 'Content-Type: application/json' --data-binary @- \
    | python3 -c 'import json, sys; print(json.load(sys.stdin).get("token", ""))' 2>/dev/null || true)
  [ -n "$token" ] || { echo "POST $url/api/auth/login as $owner_email: no token"; return 1; }
  echo "POST $url/api/auth/login as $owner_email -> a session token"
  for path in /api/auth/me /api/members; do
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 "$url$path" \
      -H @<(printf 'Authorization: Bearer %s\n' "$token"))
    echo "GET $url$path (Bearer) -> $code"
    [ "$code" = 200 ] || return 1
  done
}

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

Remove it all with: $DOWN
TXT
  if [ "$HA" = 1 ]; then
    say "The high-availability stack"
    cat <<TXT
Balancers: $PUBLIC_URL (koinonia-ha-lb1), https://127.0.0.1:9444 (koinonia-ha-lb2); on the docker
network both share https://$VIRTUAL_ADDRESS (keepalived; from this host: curl -k https://$VIRTUAL_ADDRESS/health).
Switchover of the database leader:
  ansible-playbook playbooks/switchover.yml -i $INVENTORY [-e switchover_candidate=koinonia-ha-db2]
site.yml took ${deploy_seconds} s ($deploy_kind).
TXT
    say "Smoke test through the balancer"
    smoke_ok=1
    api_smoke "$PUBLIC_URL" || smoke_ok=0
    if [ -n "$VIRTUAL_ADDRESS" ]; then
      code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://$VIRTUAL_ADDRESS/health/ready" || true)
      echo "GET https://$VIRTUAL_ADDRESS/health/ready (the virtual address, from this host) -> $code"
    fi
    say "health: $(patroni_summary) | $(redis_summary) | $(keepalived_summary)"
    [ "$smoke_ok" = 1 ] || { echo "the smoke test failed: see above"; exit 1; }
  fi
else
  say "App servers, database and Redis are up; the load balancer is PENDING"
  cat <<TXT
$PUBLIC_URL does not answer yet (roles/nginx / loadbalancer.yml not deployed or failing).
Meanwhile the API answers inside the containers, e.g.:
  docker exec $APP1 python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:3000/health/detailed").read().decode())'
Demo accounts: $owner_email / $owner_password (church owner), $operator_email / $operator_password (operator).
Remove it all with: $DOWN
TXT
  exit 2
fi
