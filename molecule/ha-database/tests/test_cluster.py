"""The HA database tier at rest: etcd, Patroni, PgBouncer and HAProxy as deployed."""

import json
import re
import time

from conftest import (
    DB_NODES,
    READ_PORT,
    ensure_table,
    get_host,
    http_json,
    psql,
    select_run,
    streaming_from,
    wait_for,
    wait_healthy,
)
from debian import debian_major, postgresql_major

testinfra_hosts = ["hd-witness"]


def test_etcd_has_three_healthy_members(host):
    endpoints = ",".join(f"http://{n}:2379" for n in ["hd-db1", "hd-db2", "hd-witness"])
    result = host.run(f"etcdctl --endpoints {endpoints} endpoint health -w json")
    assert result.rc == 0, result.stderr
    health = json.loads(result.stdout)
    assert len(health) == 3
    assert all(member["health"] for member in health)


def test_one_leader_and_one_streaming_replica_in_patronictl_list(host):
    wait_healthy(host)
    result = get_host("hd-db1").run("patronictl -c /etc/patroni/config.yml list -f json")
    assert result.rc == 0, result.stderr
    members = {m["Member"]: m for m in json.loads(result.stdout)}
    assert sorted(members) == DB_NODES
    roles = sorted(m["Role"] for m in members.values())
    assert roles == ["Leader", "Replica"]
    leader = next(m for m in members.values() if m["Role"] == "Leader")
    replica = next(m for m in members.values() if m["Role"] == "Replica")
    if debian_major(get_host("hd-db1")) == "12":
        # Patroni 3.0.2 shows no replication state ("running"): the leader's
        # pg_stat_replication shows the replica streaming.
        assert replica["State"] == "running"
        assert replica["Member"] in streaming_from(host, leader["Member"])
    else:
        assert replica["State"] == "streaming"


def test_cluster_settings_are_in_etcd_with_failsafe_and_rewind(host, patroni_cfg):
    status, config = http_json(host, "http://hd-db1:8008/config")
    assert status == 200
    assert config["ttl"] == patroni_cfg["patroni_ttl"]
    assert config["loop_wait"] == patroni_cfg["patroni_loop_wait"]
    assert config["retry_timeout"] == patroni_cfg["patroni_retry_timeout"]
    assert config["loop_wait"] + 2 * config["retry_timeout"] <= config["ttl"]
    assert config["failsafe_mode"] is True
    assert config["postgresql"]["use_pg_rewind"] is True
    assert config["postgresql"]["parameters"]["shared_buffers"] == "64MB"


def test_packaged_cluster_is_never_created_nor_started():
    for name in DB_NODES:
        node = get_host(name)
        major = postgresql_major(node)
        unit = node.run(f"systemctl is-enabled postgresql@{major}-main.service")
        assert unit.stdout.strip() == "masked"
        assert node.run("pg_lsclusters -h").stdout.strip() == ""
        # The only postmaster is Patroni's, on its own data directory.
        postmasters = (
            node.run("pgrep -u postgres -a -f '^/usr/lib/postgresql/[0-9]+/bin/postgres '")
            .stdout.strip()
            .splitlines()
        )
        assert len(postmasters) == 1, postmasters
        assert f"-D /var/lib/postgresql/{major}/koinonia" in postmasters[0]


def test_secrets_are_in_no_process_argument_and_no_world_readable_file(patroni_cfg):
    secrets = [
        patroni_cfg[k]
        for k in (
            "patroni_superuser_password",
            "patroni_replication_password",
            "patroni_restapi_password",
        )
    ]
    for name in DB_NODES:
        node = get_host(name)
        config = node.file("/etc/patroni/config.yml")
        assert (config.user, config.group, config.mode) == ("postgres", "postgres", 0o600)
        # Patroni writes its pgpass when it clones or rewinds, readable by postgres only.
        pgpass = node.file("/var/lib/postgresql/.pgpass_patroni")
        assert not pgpass.exists or pgpass.mode & 0o077 == 0
        arguments = node.run("ps -eo args").stdout
        assert not any(secret in arguments for secret in secrets)


def test_write_through_haproxy_lands_on_leader_and_is_read_on_replica(host, cfg):
    _leader, replica = wait_healthy(host)
    ensure_table(host, cfg)
    result = host.run(psql(cfg, "SELECT pg_is_in_recovery(), inet_server_addr()"))
    assert result.rc == 0, result.stderr
    assert result.stdout.startswith("f|")
    marker = f"read-on-replica-{time.time_ns()}"
    insert = f"INSERT INTO ha_writes (run, seq) VALUES ('{marker}', 1)"  # noqa: S608 (test-made id)
    host.run_test(psql(cfg, insert))
    # The replica port reaches the replica, which has the row once it has replayed it.
    assert host.run(psql(cfg, "SELECT pg_is_in_recovery()", port=READ_PORT)).stdout.strip() == "t"
    wait_for(
        "the row on the replica",
        lambda: host.run(psql(cfg, select_run(marker), port=READ_PORT)).stdout.strip() == "1",
        30,
        0.5,
    )
    on_replica = get_host(replica).run(
        f'sudo -u postgres psql -X -At -d {cfg["koinonia_db_name"]} -c "{select_run(marker)}"'
    )
    assert on_replica.stdout.strip() == "1"


def test_haproxy_write_port_has_only_the_leader_up(host):
    leader, replica = wait_healthy(host)

    def states():
        csv = host.run(
            "python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:7000/;csv').read().decode())\""
        ).stdout
        rows = [
            line.split(",")
            for line in csv.splitlines()
            if line.startswith("postgresql_write,hd-db")
        ]
        return {row[1]: row[17] for row in rows}

    expected = {leader: "UP", replica: "DOWN"}
    assert (
        wait_for("HAProxy's view of the write port", lambda: states() == expected and states(), 15)
        == expected
    )


def test_pgbouncer_runs_on_every_database_node_against_the_local_server(cfg):
    for name in DB_NODES:
        node = get_host(name)
        assert node.service("pgbouncer").is_running
        ini = node.file("/etc/pgbouncer/pgbouncer.ini").content_string
        assert re.search(
            rf"^{cfg['koinonia_db_name']} = .*host=127\.0\.0\.1 port=5432", ini, re.M
        ), ini
