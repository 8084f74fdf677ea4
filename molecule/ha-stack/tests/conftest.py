"""Shared helpers of the ha-stack scenario's Testinfra tests: the whole stack over a Patroni
cluster with pgBackRest, deployed by site.yml (molecule.yml names the hosts).

Order: the tests that read the cluster at rest run first (in file order), then the tests
marked ``fault``, which break it on purpose (switchovers, kills, etcd members stopped). Every
test that needs a healthy cluster (one leader, one streaming replica) waits for it by polling,
and every fault test leaves one behind, so the fault tests do not depend on each other's order.
Credentials are the stack base's test-only values (molecule/resources/stack/inventory.yml,
then this scenario's group_vars/), read from the files.

"Texted once" is counted where the SMS leaves the platform: the log provider counts every
call it receives, per delivery, in the field ``delivery-<id>`` of the day's hash
``sms:log:calls:<UTC date>`` on the Redis host (no deduplication, as with Twilio).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import testinfra

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "tests"))
from containers import docker_exec
from stackclient import wait_for
from stackvars import stack_group_vars

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
GROUP_VARS = stack_group_vars(SCENARIO_DIR)
CFG = GROUP_VARS["all"]
DB_NODES = ["hs-db1", "hs-db2"]
# The third etcd member, the Redis host and the pgBackRest repository.
WITNESS = "hs-witness"
REDIS = WITNESS
APP = "hs-app"
# The tests' database client: the app server, where HAProxy listens on localhost.
CLIENT = APP
WRITE_PORT = 5000
READ_PORT = 5001
PROBE = pathlib.Path(__file__).with_name("probe.py")
LOAD_SCRIPT = pathlib.Path(__file__).with_name("write_load.py")
# The bound: writes accepted again within 30 s of losing the leader.
WRITES_AGAIN_WITHIN = 30
SEND_DEADLINE = 300


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "fault: breaks the cluster on purpose; runs after every test that reads it at rest",
    )


def pytest_collection_modifyitems(items):
    """The tests at rest first, then the fault tests (a stable sort: file order within each)."""
    items.sort(key=lambda item: item.get_closest_marker("fault") is not None)


@pytest.fixture(scope="session")
def cfg():
    return CFG


@pytest.fixture(scope="session")
def patroni_cfg():
    return GROUP_VARS["patroni"]


def get_host(name):
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


@pytest.fixture(scope="session")
def client():
    return get_host(CLIENT)


@pytest.fixture(scope="session")
def witness():
    return get_host(WITNESS)


def wait_until(what, check, timeout, interval=1.0):
    """check() until it returns a true value, at most `timeout` seconds; that value. Unlike
    stackclient.wait_for, a check that raises (a node away: no answer, no JSON) counts as
    not yet."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (AssertionError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def http_json(client, url, method="GET", body=None, auth=None):
    """(status, JSON) of a request made from the client host with Python's urllib."""
    script = f"""
import base64, json, urllib.request, urllib.error
req = urllib.request.Request({url!r}, method={method!r}, data={json.dumps(body).encode() if body is not None else None!r})
req.add_header("Content-Type", "application/json")
auth = {auth!r}
if auth:
    req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        status, text = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    status, text = e.code, e.read().decode()
print(json.dumps([status, text]))
"""
    result = client.run(f"python3 -c {shlex.quote(script)}")
    if result.rc != 0:
        raise ValueError(result.stderr.strip()[-300:])
    status, text = json.loads(result.stdout)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def cluster_members(client):
    """Patroni's view of the cluster (GET /cluster) from the first node that answers."""
    for node in DB_NODES:
        try:
            status, body = http_json(client, f"http://{node}:8008/cluster")
        except ValueError:
            continue
        if status == 200:
            return body["members"]
    raise ValueError("no Patroni REST API answered")


def healthy_pair(client):
    """(leader, replica) names when one leads and the other streams from it, else None."""
    members = cluster_members(client)
    leaders = [m["name"] for m in members if m["role"] == "leader" and m["state"] == "running"]
    replicas = [m["name"] for m in members if m["role"] == "replica" and m["state"] == "streaming"]
    if len(leaders) == 1 and len(replicas) == 1:
        return leaders[0], replicas[0]
    return None


def wait_healthy(client, timeout=120):
    return wait_until(
        "one leader and one streaming replica", lambda: healthy_pair(client), timeout, 2
    )


def psql(cfg, sql, port=WRITE_PORT):
    """psql through HAProxy on the client host (run it there), as the application user."""
    return (
        f"PGPASSWORD={shlex.quote(cfg['koinonia_db_password'])} PGCONNECT_TIMEOUT=3 "
        f"psql -X -w -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {port} "
        f"-U {cfg['koinonia_db_user']} -d {cfg['koinonia_db_name']} -c {shlex.quote(sql)}"
    )


def select_run(run, column="count(*)"):
    """SQL reading the rows one test run wrote (run ids are made by the tests)."""
    return f"SELECT {column} FROM ha_writes WHERE run = '{run}'"  # noqa: S608 (test-made ids)


def ensure_table(client, cfg):
    wait_until(
        "the write port accepts writes",
        lambda: (
            client.run(
                psql(
                    cfg,
                    "CREATE TABLE IF NOT EXISTS ha_writes (id bigserial PRIMARY KEY, run text, seq int)",
                )
            ).rc
            == 0
        ),
        90,
        2,
    )


def start_load(client, cfg, run, seconds):
    """Start write_load.py on the client host as a transient unit; return its report path."""
    ensure_table(client, cfg)
    script = base64.b64encode(LOAD_SCRIPT.read_bytes()).decode()
    client.run_test(f"echo {script} | base64 -d > /root/write_load.py")
    report = f"/root/load-{run}.json"
    client.run(f"rm -f {report}")
    env = {
        "LOAD_REPORT": report,
        "LOAD_RUN": run,
        "LOAD_SECONDS": seconds,
        "LOAD_DB": cfg["koinonia_db_name"],
        "LOAD_USER": cfg["koinonia_db_user"],
        "LOAD_PASSWORD": cfg["koinonia_db_password"],
    }
    # The password reaches the script through its environment, not its arguments.
    setenv = " ".join(f"--setenv={k}={shlex.quote(str(v))}" for k, v in env.items())
    client.run_test(
        f"systemd-run --unit=hs-load-{run} --collect -p RuntimeMaxSec={int(seconds) + 60} "
        f"{setenv} python3 /root/write_load.py"
    )
    # The load is running once its first write is in.
    wait_until(
        "the load's first write",
        lambda: client.run(psql(cfg, select_run(run))).stdout.strip() not in ("", "0"),
        30,
        0.5,
    )
    return report


def load_report(client, report, timeout):
    text = wait_until(
        "the load's report",
        lambda: client.file(report).exists and client.file(report).content_string,
        timeout,
    )
    return json.loads(text)


def outage(report, fault_at):
    """(failed writes, longest time without an acknowledged write since the fault, in s).

    A write that waits (PgBouncer holds a query while it reconnects to the server) counts
    as not accepted until it is acknowledged; the first interval starts at the fault.
    """
    failed = sum(1 for attempt in report["attempts"] if not attempt[2])
    acknowledged = sorted(
        attempt[1] for attempt in report["attempts"] if attempt[2] and attempt[1] > fault_at
    )
    if not acknowledged:
        return failed, float("inf")
    points = [fault_at, *acknowledged]
    return failed, max(later - earlier for earlier, later in itertools.pairwise(points))


def docker(*args, check=True):
    return subprocess.run(
        ["docker", *args], check=check, capture_output=True, text=True, timeout=120
    )


def members() -> list[dict]:
    """Patroni's view of the cluster, asked on whichever node answers."""
    for node in DB_NODES:
        out = docker_exec(
            node,
            "runuser", "-u", "postgres", "--",
            "patronictl", "-c", "/etc/patroni/config.yml", "list", "--format", "json",
            check=False,
            timeout=20,
        )  # fmt: skip
        if out.startswith("["):
            return json.loads(out)
    return []


def leader() -> str | None:
    """The running leader, or None while there is not exactly one."""
    names = [m["Member"] for m in members() if m["Role"] == "Leader" and m["State"] == "running"]
    return names[0] if len(names) == 1 else None


def healthy() -> bool:
    found = members()
    return (
        len(found) == 2
        and sum(m["Role"] == "Leader" and m["State"] == "running" for m in found) == 1
        and sum(m["Role"] == "Replica" and m["State"] == "streaming" for m in found) == 1
    )


@pytest.fixture
def healthy_cluster():
    wait_for(healthy, 120, step=2, what="one leader and one streaming replica")
    yield
    wait_for(healthy, 180, step=2, what="one leader and one streaming replica after the test")


def psql_on(node, sql, database="koinonia"):
    """One statement on a database node as postgres over the local socket, unaligned."""
    return docker_exec(
        node,
        "runuser", "-u", "postgres", "--",
        "psql", "--no-psqlrc", "-X", "-v", "ON_ERROR_STOP=1", "-tA", "-d", database, "-c", sql,
    )  # fmt: skip


def messages_since(started: float) -> int:
    """Messages recorded since `started` (the load's), counted on the leader."""
    sql = f"SELECT count(*) FROM message WHERE created_at >= to_timestamp({started:.3f})"  # noqa: S608 - a float
    node = leader()
    return int(psql_on(node, sql)) if node else 0


def app_ready() -> bool:
    out = docker_exec(
        APP,
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
        "http://127.0.0.1:3000/health/ready",
        check=False,
    )  # fmt: skip
    return out == "200"


def probe(*args, timeout=120) -> dict:
    return json.loads(
        docker_exec(APP, "python3", "-", *args, stdin=PROBE.read_text(), timeout=timeout)
    )


def start_probe(*args) -> subprocess.Popen:
    process = subprocess.Popen(
        ["docker", "exec", "-i", APP, "python3", "-", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdin.write(PROBE.read_text())
    process.stdin.close()
    return process


def probe_for(seconds: float, texting: dict) -> dict:
    """The message load for SECONDS, waited for."""
    return finish_probe(
        start_probe("messages", str(seconds), texting["token"], texting["group"]), seconds + 180
    )


def finish_probe(process: subprocess.Popen, timeout: float) -> dict:
    out, err = process.stdout.read(), None
    process.wait(timeout=timeout)
    if process.returncode != 0:
        err = process.stderr.read()
        raise AssertionError(f"probe failed ({process.returncode}): {err[-2000:]}")
    return json.loads(out)


@pytest.fixture(scope="session")
def texting():
    """The owner's token and a group of five opted-in members."""
    wait_for(app_ready, 120, what="the app ready")
    return probe("setup", CFG["koinonia_owner_email"], CFG["koinonia_owner_password"])


HGET_OR_ZERO = (
    "local out = {} "
    "for i, field in ipairs(ARGV) do out[i] = redis.call('HGET', KEYS[1], field) or '0' end "
    "return out"
)


def provider_calls(delivery_ids: list[str]) -> dict[str, int]:
    """Calls the log provider received per delivery (today's and yesterday's hashes)."""
    today = datetime.now(UTC).date()
    calls = dict.fromkeys(delivery_ids, 0)
    fields = [f"delivery-{uuid.UUID(d)}" for d in delivery_ids]
    for day in (today, today - timedelta(days=1)):
        out = docker_exec(
            REDIS,
            "redis-cli", "--no-auth-warning", "--user", "ops",
            "EVAL", HGET_OR_ZERO, "1", f"sms:log:calls:{day.isoformat()}", *fields,
            env={"REDISCLI_AUTH": CFG["koinonia_redis_ops_password"]},
        )  # fmt: skip
        for delivery_id, value in zip(delivery_ids, out.splitlines(), strict=True):
            calls[delivery_id] += int(value)
    return calls


def deliveries(node, message_ids: list[str]) -> dict[str, str]:
    """delivery id -> status, for these messages."""
    quoted = ",".join(f"'{uuid.UUID(m)}'" for m in message_ids)
    sql = f"SELECT id, status FROM delivery WHERE message_id IN ({quoted})"  # noqa: S608 - uuids
    return dict(line.split("|") for line in psql_on(node, sql).splitlines())


def messages_per_key(node, keys: list[str]) -> dict[str, int]:
    quoted = ",".join(f"'{uuid.UUID(k)}'" for k in keys)
    sql = (
        "SELECT idempotency_key, count(*) FROM message "  # noqa: S608 - uuids
        f"WHERE idempotency_key IN ({quoted}) GROUP BY 1"
    )
    counts = dict.fromkeys(keys, 0)
    for line in psql_on(node, sql).splitlines():
        key, count = line.split("|")
        counts[key] = int(count)
    return counts


def texted_once(report: dict) -> str:
    """Every accepted POST is one message, every delivery of it sent after exactly one
    provider call; a summary line for the test's output."""
    keys = [a["key"] for a in report["accepted"]]
    ids = [a["id"] for a in report["accepted"]]
    node = wait_for(leader, 60, what="a leader")
    per_key = messages_per_key(node, keys)
    assert all(count == 1 for count in per_key.values()), {
        k: c for k, c in per_key.items() if c != 1
    }

    def all_settled():
        rows = deliveries(node, ids)
        return rows if rows and all(s in ("sent", "failed") for s in rows.values()) else None

    rows = wait_for(all_settled, SEND_DEADLINE, step=3, what="every delivery settled")
    assert len(rows) == 5 * len(ids), (len(rows), len(ids))
    calls = provider_calls(list(rows))
    not_sent = {d: s for d, s in rows.items() if s != "sent"}
    lost = [d for d in rows if calls[d] == 0]
    duplicated = sum(max(0, c - 1) for c in calls.values())
    assert not not_sent and not lost and duplicated == 0, (not_sent, lost, duplicated)
    return (
        f"messages {len(ids)}, deliveries {len(rows)}, provider calls {sum(calls.values())}, "
        f"lost 0, duplicated 0"
    )


def unavailable_window(report: dict, since: float) -> float:
    """Seconds from `since` until the first POST accepted after the longest gap that
    follows it (the writes' outage)."""
    times = [since, *sorted(a["at"] for a in report["accepted"] if a["at"] > since)]
    assert len(times) > 1, "no write accepted after the fault"
    gaps = [(b - a, b) for a, b in itertools.pairwise(times)]
    longest, resumed = max(gaps)
    return resumed - since if longest > 1 else 0.0
