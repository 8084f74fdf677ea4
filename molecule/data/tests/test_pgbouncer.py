"""Checklist phase 2.1, step 1 "PgBouncer provisioning", on the database host."""

import pytest
from debian import postgresql_major, postgresql_unit
from sandbox import assert_sandboxed

testinfra_hosts = ["data-db"]


def test_start_pgbouncer_service_running_and_enabled(host):
    service = host.service("pgbouncer")
    assert service.is_running
    assert service.is_enabled


def test_pgbouncer_runs_as_its_own_user(host):
    assert host.process.get(comm="pgbouncer").user == "pgbouncer"


def test_systemd_analyze_security_rates_pgbouncer_ok_or_better(host):
    # Debian's unit scores 9.2 UNSAFE; the role's drop-in (pgbouncer_systemd_hardening)
    # measured 1.4 OK when this test was written.
    assert_sandboxed(host, "pgbouncer", max_score=2.0)


def test_sandboxed_pgbouncer_still_writes_its_log(host):
    log = host.file("/var/log/pgbouncer/pgbouncer.log")
    assert log.exists and log.user == "pgbouncer"
    before = log.size
    host.check_output("systemctl reload pgbouncer")
    # The reload is logged ("got SIGHUP, re-reading config"): the sandbox left it writable.
    for _ in range(50):
        if host.file("/var/log/pgbouncer/pgbouncer.log").size > before:
            break
        host.run("sleep 0.1")
    assert host.file("/var/log/pgbouncer/pgbouncer.log").size > before


def test_pgbouncer_listening_on_6432(host):
    assert host.socket("tcp://0.0.0.0:6432").is_listening


@pytest.mark.parametrize("path", ["/etc/pgbouncer/userlist.txt"])
def test_deploy_config_userlist_is_0600_pgbouncer(host, path):
    userlist = host.file(path)
    assert userlist.user == "pgbouncer"
    assert userlist.group == "pgbouncer"
    assert userlist.mode == 0o600


def test_deploy_config_userlist_holds_scram_secrets_only(host, cfg):
    content = host.file("/etc/pgbouncer/userlist.txt").content_string
    entries = [line for line in content.splitlines() if line.startswith('"')]
    assert entries, "userlist.txt has no user"
    for line in entries:
        user, secret = (part.strip('"') for part in line.split(" ", 1))
        assert secret.startswith("SCRAM-SHA-256$4096:"), f"{user} has no SCRAM secret"
    assert cfg["koinonia_db_password"] not in content


def test_deploy_config_pool_settings_in_pgbouncer_ini(host):
    ini = host.file("/etc/pgbouncer/pgbouncer.ini")
    assert ini.mode == 0o640
    assert ini.contains("^auth_type = scram-sha-256$")
    assert ini.contains("^pool_mode = transaction$")
    assert ini.contains("^default_pool_size = 30$")
    assert ini.contains("^max_client_conn = 1000$")


def test_create_log_directory_owned_by_pgbouncer(host):
    log_dir = host.file("/var/log/pgbouncer")
    assert log_dir.is_directory
    assert log_dir.user == "pgbouncer"
    assert log_dir.group == "pgbouncer"
    log = host.file("/var/log/pgbouncer/pgbouncer.log")
    assert log.exists and log.user == "pgbouncer"
    assert log.contains("process up: PgBouncer")


def test_postgresql_running_and_role_has_scram_password(host, cfg):
    assert host.service(postgresql_unit(host)).is_running
    user = cfg["koinonia_db_user"]
    query = f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'"  # noqa: S608 (test constant)
    result = host.run("runuser -u postgres -- psql -XAtc %s", query)
    assert result.rc == 0, result.stderr
    assert result.stdout.strip().startswith("SCRAM-SHA-256$4096:")
    encryption = host.run("runuser -u postgres -- psql -XAtc 'SHOW password_encryption'")
    assert encryption.stdout.strip() == "scram-sha-256"


def test_pg_hba_admits_only_pgbouncer_hosts_and_local_superuser(host):
    hba = host.file(f"/etc/postgresql/{postgresql_major(host)}/main/pg_hba.conf")
    rules = [
        line.split()
        for line in hba.content_string.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ["local", "all", "postgres", "peer"] in rules
    for rule in rules:
        if rule[0] == "local":
            assert rule[2] == "postgres"
        else:
            assert rule[3] in ("127.0.0.1/32", "::1/128"), rule
            assert rule[4] == "scram-sha-256", rule
