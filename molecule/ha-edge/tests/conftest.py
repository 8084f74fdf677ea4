"""Shared helpers of the ha-edge scenario's Testinfra tests (Redis with Sentinel).

Every fault test starts from a healthy set (one master, two replicas linked to it, three
Sentinels agreeing on it) and leaves one behind, so the tests do not depend on their order.
The credentials are the scenario's test-only inventory values, read from its files.
"""

import json
import pathlib
import subprocess
import sys
import time

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "tests"))
from containers import docker_exec

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
STACK_INVENTORY = SCENARIO_DIR.parent / "resources" / "stack" / "inventory.yml"
REDIS_NODES = ["he-redis1", "he-redis2", "he-redis3"]
APP_SERVERS = ["he-app1", "he-app2"]
MASTER_NAME = "koinonia"
PROBE = pathlib.Path(__file__).with_name("probe.py")


def _yaml(path):
    return yaml.safe_load(path.read_text())


STACK_VARS = _yaml(STACK_INVENTORY)["all"]["vars"]
SENTINEL_PASSWORD = _yaml(SCENARIO_DIR / "group_vars" / "all.yml")[
    "koinonia_redis_sentinel_password"
]
REDIS_VARS = _yaml(SCENARIO_DIR / "group_vars" / "redis.yml")
OPERATOR = (STACK_VARS["koinonia_operator_email"], STACK_VARS["koinonia_operator_password"])


def sentinel(host, *args, check=True):
    """A Sentinel command on HOST (the password in the environment, not the arguments)."""
    return docker_exec(
        host,
        "redis-cli",
        "--no-auth-warning",
        "-p",
        "26379",
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


def copy_probe(host):
    subprocess.run(["docker", "cp", str(PROBE), f"{host}:/root/probe.py"], check=True)


def start_probe(host, *args):
    """probe.py on HOST (python3 of the base image), its output collected by the caller.
    In /root: /tmp is a tmpfs, which docker cp does not write into."""
    copy_probe(host)
    return subprocess.Popen(
        ["docker", "exec", host, "python3", "/root/probe.py", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def probe_lines(process, bound):
    out, err = process.communicate(timeout=bound)
    assert process.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]
