"""The set's links over TLS (group_vars/redis.yml: redis_port and redis_sentinel_port 0,
TLS ports only): the replicas stream from the master's TLS port, the Sentinels answer only
over TLS and reach Redis and each other over it, and a plain-text client gets nowhere."""

import subprocess

from conftest import (
    REDIS_NODES,
    REDIS_VARS,
    SENTINEL_PASSWORD,
    STACK_VARS,
    docker_exec,
    info,
    ops,
    sentinel,
)

REDIS_TLS_PORT = str(REDIS_VARS["redis_tls_port"])
SENTINEL_TLS_PORT = str(REDIS_VARS["redis_sentinel_tls_port"])
# The ports a plain-text Redis and Sentinel would listen on (the defaults the scenario turned off).
PLAIN_PORTS = ("6379", "26379")


def plain_text_ping(host, port, password):
    """redis-cli PING on HOST:PORT without TLS (the password in the environment):
    (exit status, everything it printed)."""
    result = subprocess.run(
        ["docker", "exec", "-e", f"REDISCLI_AUTH={password}", host,
         "redis-cli", "--no-auth-warning", "-p", port, "PING"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return result.returncode, (result.stdout + result.stderr).strip()


def test_each_replica_streams_from_the_master_over_tls_with_its_plain_port_closed(
    healthy_master,
):
    for node in REDIS_NODES:
        assert ops(node, "CONFIG", "GET", "port").splitlines()[1] == "0", node
        key = docker_exec(node, "stat", "-c", "%a %U", "/etc/redis/tls/redis.key")
        assert key == "600 redis", node
        assert ops(node, "CONFIG", "GET", "tls-replication").splitlines()[1] == "yes", node
    for replica in (node for node in REDIS_NODES if node != healthy_master):
        replication = info(replica, "replication")
        # Up, on the master's TLS port: the only port it listens on, so the link is TLS.
        assert replication["master_link_status"] == "up", replica
        assert (replication["master_host"], replication["master_port"]) == (
            healthy_master,
            REDIS_TLS_PORT,
        ), replica


def test_a_plain_text_client_is_refused_by_redis_and_by_the_sentinels():
    redis_password = STACK_VARS["koinonia_redis_ops_password"]
    for node in REDIS_NODES:
        for port in PLAIN_PORTS:  # nothing listens there
            status, said = plain_text_ping(node, port, redis_password)
            assert status != 0 and "Connection refused" in said, (node, port, said)
        for port, password in (
            (REDIS_TLS_PORT, redis_password),
            (SENTINEL_TLS_PORT, SENTINEL_PASSWORD),
        ):
            # The TLS ports drop a client that does not start TLS.
            status, said = plain_text_ping(node, port, password)
            assert status != 0 and "PONG" not in said, (node, port, said)


def test_the_sentinels_answer_over_tls_agree_on_the_master_and_see_each_other_on_tls_ports(
    healthy_master,
):
    for node in REDIS_NODES:
        assert sentinel(node, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "koinonia").splitlines() == [
            healthy_master,
            REDIS_TLS_PORT,
        ], node
        # The other Sentinels, found through the master's hello channel: by name, on their
        # TLS port, and reachable (no s_down or disconnected flag).
        fields = sentinel(node, "SENTINEL", "SENTINELS", "koinonia").splitlines()
        entries = []
        for key, value in zip(fields[::2], fields[1::2], strict=True):
            if key == "name":  # each Sentinel's fields start with its name
                entries.append({})
            entries[-1][key] = value
        others = {entry["ip"]: (entry["port"], entry["flags"]) for entry in entries}
        assert others == {
            other: (SENTINEL_TLS_PORT, "sentinel") for other in REDIS_NODES if other != node
        }, node
