"""Shared helpers of the ha-database scenario's Testinfra tests.

The test-only credentials live in molecule.yml's inventory; the tests read them from there.
Every fault test starts from a healthy cluster (one leader, one streaming replica) and
leaves one behind, so the tests do not depend on their order.
"""

import base64
import itertools
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import pytest
import testinfra
import yaml

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
# The shared test helpers (stackops.run_playbook: a playbook run as an operator would).
sys.path.insert(0, str(SCENARIO_DIR.parent / "resources" / "tests"))
DB_NODES = ["hd-db1", "hd-db2"]
CLIENT = "hd-witness"
WRITE_PORT = 5000
READ_PORT = 5001
LOAD_SCRIPT = pathlib.Path(__file__).with_name("write_load.py")


def group_vars():
    molecule_yml = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
    return molecule_yml["provisioner"]["inventory"]["group_vars"]


@pytest.fixture(scope="session")
def cfg():
    return group_vars()["all"]


@pytest.fixture(scope="session")
def patroni_cfg():
    return group_vars()["patroni"]


def get_host(name):
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


@pytest.fixture(scope="session")
def client():
    return get_host(CLIENT)


def wait_for(what, check, timeout, interval=1.0):
    """check() until it returns a true value, at most `timeout` seconds; that value."""
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


def streaming_from(client, leader):
    """Names of the members streaming from `leader`: its pg_stat_replication, as its
    GET /patroni shows it ("replication")."""
    status, body = http_json(client, f"http://{leader}:8008/patroni")
    if status != 200:
        return set()
    return {
        row["application_name"]
        for row in body.get("replication", [])
        if row.get("state") == "streaming"
    }


def healthy_pair(client):
    """(leader, replica) names when one leads and the other streams from it, else None.

    Patroni 3.0.4 and later show a streaming replica's state as "streaming"; 3.0.2
    (Debian 12) shows "running" for every replica, so there the leader's
    pg_stat_replication says whether it streams."""
    members = cluster_members(client)
    leaders = [m["name"] for m in members if m["role"] == "leader" and m["state"] == "running"]
    replicas = [m["name"] for m in members if m["role"] == "replica" and m["state"] == "streaming"]
    unreported = [m["name"] for m in members if m["role"] == "replica" and m["state"] == "running"]
    if len(leaders) == 1 and unreported:
        replicas += sorted(set(unreported) & streaming_from(client, leaders[0]))
    if len(leaders) == 1 and len(replicas) == 1:
        return leaders[0], replicas[0]
    return None


def wait_healthy(client, timeout=120):
    return wait_for(
        "one leader and one streaming replica", lambda: healthy_pair(client), timeout, 2
    )


def psql(cfg, sql, port=WRITE_PORT):
    """psql through HAProxy on the client host, as the application user."""
    return (
        f"PGPASSWORD={shlex.quote(cfg['koinonia_db_password'])} PGCONNECT_TIMEOUT=3 "
        f"psql -X -w -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {port} "
        f"-U {cfg['koinonia_db_user']} -d {cfg['koinonia_db_name']} -c {shlex.quote(sql)}"
    )


def select_run(run, column="count(*)"):
    """SQL reading the rows one test run wrote (run ids are made by the tests)."""
    return f"SELECT {column} FROM ha_writes WHERE run = '{run}'"  # noqa: S608 (test-made ids)


def ensure_table(client, cfg):
    wait_for(
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
        f"systemd-run --unit=hd-load-{run} --collect -p RuntimeMaxSec={int(seconds) + 60} "
        f"{setenv} python3 /root/write_load.py"
    )
    # The load is running once its first write is in.
    wait_for(
        "the load's first write",
        lambda: client.run(psql(cfg, select_run(run))).stdout.strip() not in ("", "0"),
        30,
        0.5,
    )
    return report


def load_report(client, report, timeout):
    text = wait_for(
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
