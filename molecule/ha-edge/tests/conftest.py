"""Shared helpers of the ha-edge scenario's Testinfra tests (Redis with Sentinel).

Every fault test starts from a healthy set (one master, two replicas linked to it, three
Sentinels agreeing on it) and leaves one behind, so the tests do not depend on their order.
The credentials are the scenario's test-only inventory values, read from its files.

"Texted once" is counted where the SMS leaves the platform: the app servers text through
Twilio's API (group_vars/app_servers.yml) to bench/fake_twilio.py on he-db, which records
every call per delivery (the I-Twilio-Idempotency-Token ``delivery-<id>``) and dedupes
nothing, as Twilio does not. Not the stack's `log` provider: it keeps its count in Redis,
the store these tests fail over.
"""

import json
import pathlib
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "tests"))
from containers import docker_exec

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
PROJECT_DIR = SCENARIO_DIR.parent.parent
STACK_INVENTORY = SCENARIO_DIR.parent / "resources" / "stack" / "inventory.yml"
REDIS_NODES = ["he-redis1", "he-redis2", "he-redis3"]
APP_SERVERS = ["he-app1", "he-app2"]
MASTER_NAME = "koinonia"
PROBE = pathlib.Path(__file__).with_name("probe.py")
# The message load (a group of five, POSTs with Idempotency-Keys, a 503 retried with the
# same key): the ha-stack scenario's probe, the same app API, standard library only.
TEXTING_PROBE = SCENARIO_DIR.parent / "ha-stack" / "tests" / "probe.py"
DB = "he-db"


def _yaml(path):
    return yaml.safe_load(path.read_text())


STACK_VARS = _yaml(STACK_INVENTORY)["all"]["vars"]
SENTINEL_PASSWORD = _yaml(SCENARIO_DIR / "group_vars" / "all.yml")[
    "koinonia_redis_sentinel_password"
]
REDIS_VARS = _yaml(SCENARIO_DIR / "group_vars" / "redis.yml")
APP_VARS = _yaml(SCENARIO_DIR / "group_vars" / "app_servers.yml")
OPERATOR = (STACK_VARS["koinonia_operator_email"], STACK_VARS["koinonia_operator_password"])
OWNER = (STACK_VARS["koinonia_owner_email"], STACK_VARS["koinonia_owner_password"])


# Redis and the Sentinels answer only over TLS (group_vars/redis.yml), checked against the
# scenario's test CA, which the redis role writes on every node.
REDIS_CA = "/etc/redis/tls/ca.crt"
SENTINEL_TLS_PORT = str(REDIS_VARS["redis_sentinel_tls_port"])


def sentinel(host, *args, check=True):
    """A Sentinel command on HOST over TLS (the password in the environment, not the
    arguments)."""
    return docker_exec(
        host,
        "redis-cli",
        "--no-auth-warning",
        "--tls",
        "--cacert",
        REDIS_CA,
        "-p",
        SENTINEL_TLS_PORT,
        *args,
        env={"REDISCLI_AUTH": SENTINEL_PASSWORD},
        check=check,
        timeout=15,
    )


def ops(host, *args, check=True):
    """A Redis command on HOST as the ops user, over the Unix socket."""
    return docker_exec(
        host,
        "redis-cli",
        "--no-auth-warning",
        "-s",
        "/run/redis/redis-server.sock",
        "--user",
        "ops",
        *args,
        env={"REDISCLI_AUTH": STACK_VARS["koinonia_redis_ops_password"]},
        check=check,
        timeout=15,
    )


def info(host, section):
    lines = ops(host, "INFO", section, check=False).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def announced_master(host):
    """The master's hostname as HOST's Sentinel names it, or None (no answer)."""
    answer = sentinel(host, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME, check=False)
    lines = answer.splitlines()
    return lines[0] if len(lines) == 2 else None


def wait_for(predicate, bound, what, step=0.2):
    started = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() - started > bound:
            raise AssertionError(f"{what}: not within {bound} s")
        time.sleep(step)


def set_is_healthy():
    """The master's name when every Sentinel names the same master, it is master with two
    replicas streaming from it, and the Sentinels know two replicas and two other Sentinels."""
    masters = {announced_master(host) for host in REDIS_NODES}
    if len(masters) != 1 or None in masters:
        return None
    master = masters.pop()
    if info(master, "replication").get("role") != "master":
        return None
    replicas = [node for node in REDIS_NODES if node != master]
    for replica in replicas:
        replication = info(replica, "replication")
        if replication.get("role") != "slave" or replication.get("master_link_status") != "up":
            return None
        if replication.get("master_host") != master:
            return None
    for host in REDIS_NODES:
        fields = sentinel(host, "SENTINEL", "MASTER", MASTER_NAME, check=False).splitlines()
        state = dict(zip(fields[::2], fields[1::2], strict=False))
        if state.get("num-slaves") != "2" or state.get("num-other-sentinels") != "2":
            return None
        if state.get("flags") != "master":
            return None
    return master


@pytest.fixture
def healthy_master():
    """The master of a healthy set (waited for); and a healthy set again afterwards."""
    master = wait_for(set_is_healthy, 90, "a healthy Redis set", step=1)
    yield master
    wait_for(set_is_healthy, 120, "the Redis set healthy again", step=1)


def copy_probe(host, probe=PROBE):
    """PROBE into HOST's /root (/tmp is a tmpfs, which docker cp does not write into)."""
    path = f"/root/{probe.parent.parent.name}-probe.py"
    subprocess.run(["docker", "cp", str(probe), f"{host}:{path}"], check=True)
    return path


def run_probe(host, *args, stdin=None, timeout=120):
    """PROBE on HOST, waited for: its one JSON line."""
    return json.loads(
        docker_exec(host, "python3", copy_probe(host), *args, stdin=stdin, timeout=timeout)
    )


def start_probe(host, *args, probe=PROBE):
    """PROBE on HOST (python3 of the base image), its output collected by the caller."""
    return subprocess.Popen(
        ["docker", "exec", host, "python3", copy_probe(host, probe), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def probe_lines(process, bound):
    out, err = process.communicate(timeout=bound)
    assert process.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def kill_master(master):
    """kill -9 of MASTER's redis-server (systemd starts it again after RestartSec)."""
    docker_exec(master, "sh", "-c", "kill -9 $(cat /run/redis/redis-server.pid)")


def new_master_announced(old, asked=None):
    """The master the Sentinel on ASKED (default: OLD's) names once it is not OLD, waited for."""
    asked = asked or old
    return wait_for(
        lambda: (m := announced_master(asked)) not in (None, old) and m,
        30,
        "a new master announced",
        step=0.1,
    )


# --- replication cut: the replicas stop receiving, and nobody notices ------------------------

CUT_TABLE = "ha_edge_replication_cut"


def cut_replication(master):
    """Drops every packet of the replication streams between MASTER and its replicas, both
    ways, on MASTER (nftables), without closing them: the replicas receive nothing more and
    confirm nothing more, and neither side notices before repl-timeout (60 s). The Sentinels'
    connections, and any new connection, pass. Returns the replicas' addresses (ip:port)."""
    listed = ops(master, "CLIENT", "LIST", "TYPE", "replica")
    addresses = [
        field.removeprefix("addr=")
        for line in listed.splitlines()
        for field in line.split()
        if field.startswith("addr=")
    ]
    assert len(addresses) == 2, listed
    out_rules = "".join(
        f"ip daddr {ip} tcp dport {port} drop; "
        for ip, port in (a.rsplit(":", 1) for a in addresses)
    )
    in_rules = "".join(
        f"ip saddr {ip} tcp sport {port} drop; "
        for ip, port in (a.rsplit(":", 1) for a in addresses)
    )
    ruleset = (
        f"table inet {CUT_TABLE} {{\n"
        f"  chain output {{ type filter hook output priority 0; {out_rules}}}\n"
        f"  chain input {{ type filter hook input priority 0; {in_rules}}}\n"
        "}\n"
    )
    docker_exec(master, "nft", "-f", "-", stdin=ruleset)
    return addresses


def heal_replication(master):
    docker_exec(master, "nft", "delete", "table", "inet", CUT_TABLE, check=False)


# --- the database and the provider stand-in --------------------------------------------------


def psql(sql):
    """One statement on he-db as postgres (peer authentication), unaligned."""
    return docker_exec(
        DB,
        "runuser", "-u", "postgres", "--",
        "psql", "--no-psqlrc", "-X", "-v", "ON_ERROR_STOP=1", "-tA", "-d", "koinonia", "-c", sql,
    )  # fmt: skip


# The app's Twilio base URL (group_vars/app_servers.yml): the stand-in serves there.
PROVIDER_URL = APP_VARS["app_extra_env"]["TWILIO_BASE_URL"]
PROVIDER_SCRIPT = "/usr/local/lib/koinonia-fake-twilio.py"
PROVIDER_UNIT = "koinonia-fake-twilio"


def provider_counts():
    """The stand-in's counts (calls, deliveries, repeated, perDelivery), asked from an app
    server (he-db has no curl); None while it does not answer."""
    out = docker_exec(
        APP_SERVERS[0],
        "curl", "-sf", "--max-time", "5", f"{PROVIDER_URL}/calls?per=delivery",
        check=False,
    )  # fmt: skip
    return json.loads(out) if out else None


@pytest.fixture(scope="session")
def provider():
    """bench/fake_twilio.py on he-db where the app's Twilio base URL points, for the session."""
    url = urlsplit(PROVIDER_URL)
    assert url.hostname == DB, PROVIDER_URL
    subprocess.run(
        ["docker", "cp", str(PROJECT_DIR / "bench" / "fake_twilio.py"), f"{DB}:{PROVIDER_SCRIPT}"],
        check=True,
    )
    docker_exec(DB, "systemctl", "stop", PROVIDER_UNIT, check=False)  # a previous verify's
    docker_exec(
        DB,
        "systemd-run", f"--unit={PROVIDER_UNIT}", "--collect",
        "/usr/bin/python3", PROVIDER_SCRIPT, str(url.port), "0", "--listen", "0.0.0.0",
    )  # fmt: skip
    wait_for(provider_counts, 30, "the provider stand-in answering")
    yield
    docker_exec(DB, "systemctl", "stop", PROVIDER_UNIT, check=False)


@pytest.fixture(scope="session")
def texting():
    """The owner's token and a group of five opted-in members (ha-stack's probe `setup`)."""
    (found,) = probe_lines(start_probe(APP_SERVERS[0], "setup", *OWNER, probe=TEXTING_PROBE), 120)
    return found


def _quoted(ids):
    return ",".join(f"'{uuid.UUID(i)}'" for i in ids)  # UUIDs: nothing to escape


def messages_per_key(keys):
    """How many messages were recorded under each Idempotency-Key."""
    counts = dict.fromkeys(keys, 0)
    sql = f"SELECT idempotency_key, count(*) FROM message WHERE idempotency_key IN ({_quoted(keys)}) GROUP BY 1"  # noqa: S608 - uuids
    for line in psql(sql).splitlines():
        key, count = line.split("|")
        counts[key] = int(count)
    return counts


def delivery_statuses(message_ids):
    """delivery id -> status, for these messages."""
    sql = f"SELECT id, status FROM delivery WHERE message_id IN ({_quoted(message_ids)})"  # noqa: S608 - uuids
    return dict(line.split("|") for line in psql(sql).splitlines())


# Deliveries not settled yet: waiting, claimed, or in doubt until the provider's record (the
# minute's in-doubt sweep) says.
UNSETTLED = ("queued", "sending", "unknown")


def texting_outcome(message_ids, members, bound):
    """Waits (at most BOUND s) until every delivery of these messages is settled, then counts
    them against the provider's calls: {accepted messages, deliveries, provider calls, lost
    (not `sent`, or `sent` with no call), duplicated (calls beyond a delivery's first),
    unknown-left}. MEMBERS deliveries per message are expected."""

    def settled():
        rows = delivery_statuses(message_ids)
        done = len(rows) == members * len(message_ids)
        return rows if done and not any(s in UNSETTLED for s in rows.values()) else None

    try:
        rows = wait_for(settled, bound, "every delivery settled", step=2)
    except AssertionError:
        rows = delivery_statuses(message_ids)  # counted below as they are
    per_delivery = provider_counts()["perDelivery"]
    calls = {d: per_delivery.get(f"delivery-{d}", 0) for d in rows}
    never_recorded = members * len(message_ids) - len(rows)
    return {
        "accepted messages": len(message_ids),
        "deliveries": len(rows),
        "provider calls": sum(calls.values()),
        "lost": never_recorded
        + sum(1 for d, s in rows.items() if s != "unknown" and (s != "sent" or not calls[d])),
        "duplicated": sum(max(0, n - 1) for n in calls.values()),
        "unknown-left": sum(1 for s in rows.values() if s == "unknown"),
    }
