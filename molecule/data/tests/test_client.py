"""Checklist phase 2.1 from the client host (where the app servers will be)."""

import base64
import json
import pathlib
import shlex
import time

from conftest import other_host, with_env
from debian import postgresql_major

testinfra_hosts = ["data-client"]

PGBOUNCER = "data-db"
POOL_LOAD = pathlib.Path(__file__).with_name("pool_load.py")


def psql(cfg, user, password, database, *sql, port=6432, host_name=PGBOUNCER):
    commands = " ".join(f"-c {shlex.quote(s)}" for s in sql)
    cmd = f"psql -X -w -At -h {host_name} -p {port} -U {user} -d {database} {commands}"
    return with_env(cmd, PGPASSWORD=password) if password is not None else cmd


def test_connectivity_select_version_with_password(host, cfg):
    result = host.run(
        psql(
            cfg,
            cfg["koinonia_db_user"],
            cfg["koinonia_db_password"],
            cfg["koinonia_db_name"],
            "SELECT version()",
        )
    )
    assert result.rc == 0, result.stderr
    # The server is the one the database host's release packages.
    assert result.stdout.startswith(f"PostgreSQL {postgresql_major(other_host('data-db'))}.")


def test_connectivity_fails_with_wrong_password(host, cfg):
    result = host.run(
        psql(cfg, cfg["koinonia_db_user"], "not-the-password", cfg["koinonia_db_name"], "SELECT 1")
    )
    assert result.rc != 0
    assert "SASL authentication failed" in result.stderr


def test_connectivity_fails_without_password(host, cfg):
    result = host.run(psql(cfg, cfg["koinonia_db_user"], None, cfg["koinonia_db_name"], "SELECT 1"))
    assert result.rc != 0
    assert "no password supplied" in result.stderr


def test_monitor_admin_console_show_pools_and_stats(host, cfg):
    result = host.run(
        psql(
            cfg,
            cfg["koinonia_pgbouncer_admin_user"],
            cfg["koinonia_pgbouncer_admin_password"],
            "pgbouncer",
            "SHOW POOLS",
            "SHOW STATS",
            "SHOW CLIENTS",
            "SHOW SERVERS",
        )
    )
    assert result.rc == 0, result.stderr
    assert f"{cfg['koinonia_db_name']}|{cfg['koinonia_db_user']}|" in result.stdout


def test_monitor_stats_user_reads_but_cannot_administer(host, cfg):
    user, password = cfg["koinonia_pgbouncer_stats_user"], cfg["koinonia_pgbouncer_stats_password"]
    shows = host.run(psql(cfg, user, password, "pgbouncer", "SHOW POOLS", "SHOW STATS"))
    assert shows.rc == 0, shows.stderr
    pause = host.run(psql(cfg, user, password, "pgbouncer", "PAUSE"))
    assert pause.rc != 0
    assert "admin access needed" in pause.stderr


def test_monitor_show_config_matches_checklist(host, cfg):
    result = host.run(
        psql(
            cfg,
            cfg["koinonia_pgbouncer_admin_user"],
            cfg["koinonia_pgbouncer_admin_password"],
            "pgbouncer",
            "SHOW CONFIG",
        )
    )
    assert result.rc == 0, result.stderr
    config = {}
    for line in result.stdout.splitlines():
        fields = line.split("|")
        config[fields[0]] = fields[1]
    assert config["pool_mode"] == "transaction"
    assert config["default_pool_size"] == "30"
    assert config["max_client_conn"] == "1000"
    assert config["auth_type"] == "scram-sha-256"


def test_postgres_rejects_host_not_in_pg_hba(host, cfg):
    result = host.run(
        psql(
            cfg,
            cfg["koinonia_db_user"],
            cfg["koinonia_db_password"],
            cfg["koinonia_db_name"],
            "SELECT 1",
            port=5432,
        )
    )
    assert result.rc != 0
    assert "no pg_hba.conf entry for host" in result.stderr


def test_pooling_300_clients_share_at_most_default_pool_size_server_connections(host, cfg):
    """300 clients connected at once through PgBouncer; PostgreSQL sees at most 30 of them."""
    db = other_host("data-db")
    count = (
        "SELECT count(*) FROM pg_stat_activity"  # noqa: S608 (test constants)
        f" WHERE datname = '{cfg['koinonia_db_name']}' AND usename = '{cfg['koinonia_db_user']}'"
    )
    sampler = (
        "rm -f /root/pool-stop /root/pool-samples; "
        "while [ ! -e /root/pool-stop ]; do "
        f'runuser -u postgres -- psql -XAtc "{count}" >> /root/pool-samples; sleep 0.1; done'
    )
    db.run("nohup sh -c %s >/dev/null 2>&1 &", sampler)
    time.sleep(1)

    script = base64.b64encode(POOL_LOAD.read_bytes()).decode()
    host.run_test(f"echo {script} | base64 -d > /root/pool_load.py")
    load = host.run(
        with_env(
            "python3 /root/pool_load.py",
            POOL_HOST=PGBOUNCER,
            POOL_PORT=6432,
            POOL_DB=cfg["koinonia_db_name"],
            POOL_USER=cfg["koinonia_db_user"],
            POOL_PASSWORD=cfg["koinonia_db_password"],
            POOL_CLIENTS=300,
        )
    )
    db.run("touch /root/pool-stop")
    time.sleep(0.5)
    samples = [int(n) for n in db.file("/root/pool-samples").content_string.split()]

    assert load.rc == 0, load.stdout + load.stderr
    report = json.loads(load.stdout)
    assert report["errors"] == [], report["errors"][:5]
    assert report["concurrent_clients"] == 300
    assert report["transactions"] == 300 * report["transactions_per_client"]
    busy = [n for n in samples if n > 0]
    assert busy, f"PostgreSQL never saw a connection while the load ran: {samples}"
    assert max(samples) <= 30, f"server connections exceeded default_pool_size: {max(samples)}"
