"""Bad input fails early with a message a person can act on, and changes nothing."""

import json
import os
import pathlib
import re
import subprocess

import pytest
from conftest import other_host
from debian import postgresql_major, postgresql_unit

testinfra_hosts = ["data-db"]

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
PROJECT_DIR = SCENARIO_DIR.parent.parent


# Where the configuration checks start their throwaway server (koinonia-*-check-config).
CHECK_DIRS = "/tmp/koinonia-*-check.*"


def state(host):
    """What a run would touch: the config files and the running processes."""
    conf = f"/etc/postgresql/{postgresql_major(host)}/main"
    files = [
        "/etc/pgbouncer/pgbouncer.ini",
        "/etc/pgbouncer/userlist.txt",
        "/etc/pgbouncer/pgbouncer-listen.ini",
        f"{conf}/conf.d/10-koinonia-restart.conf",
        f"{conf}/conf.d/20-koinonia.conf",
    ]
    sums = {path: (host.file(path).sha256sum, host.file(path).mtime) for path in files}
    pids = [
        host.run("systemctl show -p MainPID --value %s", unit).stdout.strip()
        for unit in ("pgbouncer", postgresql_unit(host))
    ]
    # A reload keeps the PID: PgBouncer logs every SIGHUP it gets.
    reloads = host.run("grep -c 'got SIGHUP' /var/log/pgbouncer/pgbouncer.log").stdout.strip()
    return sums, pids, reloads, server_processes(host, "pgbouncer")


def redis_state(host):
    """What a Redis run would touch: its config files and its processes."""
    files = ["/etc/redis/redis.conf", "/etc/redis/users.acl"]
    sums = {path: (host.file(path).sha256sum, host.file(path).mtime) for path in files}
    pid = host.run("systemctl show -p MainPID --value redis-server").stdout.strip()
    return sums, pid, server_processes(host, "redis-server")


def server_processes(host, name):
    """Every process of that program, and what a configuration check left behind."""
    pids = host.run("pgrep -x %s", name).stdout.split()
    leftovers = host.run(f"ls -d {CHECK_DIRS}").stdout.split()
    return sorted(pids), leftovers


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        (
            {"pgbouncer_pool_mode": "bogus"},
            "value of pgbouncer_pool_mode must be one of: "
            "session, transaction, statement, got: bogus",
        ),
        (
            {"pgbouncer_default_pool_size": "-5"},
            "PgBouncer pool settings are out of range: pgbouncer_default_pool_size (-5)",
        ),
        ({"pgbouncer_max_client_conn": "lots"}, "pgbouncer_max_client_conn"),
        (
            {"pgbouncer_server_tls_sslmode": "on"},
            "value of pgbouncer_server_tls_sslmode must be one of: "
            "disable, allow, prefer, require, verify-ca, verify-full, got: on",
        ),
        (
            {"pgbouncer_client_tls_key": ""},
            "PgBouncer TLS is incomplete: pgbouncer_client_tls_sslmode=require needs "
            "pgbouncer_client_tls_cert and pgbouncer_client_tls_key",
        ),
        (
            {"pgbouncer_client_tls_sslmode": "verify-full"},
            "pgbouncer_client_tls_sslmode=verify-full needs pgbouncer_client_tls_cert",
        ),
    ],
    ids=[
        "pool_mode-bogus",
        "pool_size-negative",
        "max_client_conn-not-an-int",
        "server_tls_sslmode-bogus",
        "client_tls-key-missing",
        "client_tls-verify-without-ca",
    ],
)
def test_bad_input_fails_early_and_changes_nothing(host, extra_vars, message):
    before = state(host)
    output = run_role_failing(extra_vars)
    assert message in output, output[-3000:]
    assert state(host) == before


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"work_mem": "lots"}, 'invalid value for parameter "work_mem": "lots"'),
        ({"no_such_setting": "1"}, 'unrecognized configuration parameter "no_such_setting"'),
    ],
    ids=["value-postgresql-refuses", "parameter-postgresql-does-not-know"],
)
def test_a_postgresql_setting_the_server_refuses_fails_with_its_message_and_touches_nothing(
    host, settings, message
):
    before = state(host)
    output = run_role_failing({"postgresql_settings": settings}, role="postgresql")
    # PostgreSQL's message, as Ansible prints it inside its JSON result (quotes escaped).
    assert message in output.replace('\\"', '"'), output[-3000:]
    assert state(host) == before


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"query_timeout": "lots"}, 'invalid value "lots" for parameter query_timeout'),
        ({"no_such_setting": "1"}, "unknown parameter: pgbouncer/no_such_setting"),
    ],
    ids=["value-pgbouncer-refuses", "parameter-pgbouncer-does-not-know"],
)
def test_a_pgbouncer_setting_the_pooler_refuses_fails_with_its_message_and_touches_nothing(
    host, settings, message
):
    before = state(host)
    output = run_role_failing({"pgbouncer_extra_settings": settings})
    # PgBouncer's message, from its start-up on the candidate pgbouncer.ini (validate:).
    assert "failed to validate" in output, output[-3000:]
    assert message in output.replace('\\"', '"'), output[-3000:]
    assert state(host) == before


@pytest.mark.parametrize(
    ("settings", "messages"),
    [
        (
            {"lazyfree-lazy-user-del": "maybe"},
            ["FATAL CONFIG FILE ERROR", ">>> 'lazyfree-lazy-user-del maybe'", "'yes' or 'no'"],
        ),
        # Redis 7.0 says "Bad directive", 8.0 "Unresolved Configuration(s)"; both quote it.
        ({"no-such-directive": "1"}, [">>> 'no-such-directive 1'"]),
    ],
    ids=["value-redis-refuses", "directive-redis-does-not-know"],
)
def test_a_redis_setting_the_server_refuses_fails_with_its_message_and_touches_nothing(
    settings, messages
):
    redis = other_host("data-redis")
    before = redis_state(redis)
    output = run_role_failing(
        {"redis_extra_config": settings, "koinonia_bad_input_hosts": "redis"},
        role="redis",
        hostname="data-redis",
    )
    assert "failed to validate" in output, output[-3000:]
    for message in messages:
        assert message in output.replace('\\"', '"'), output[-3000:]
    assert redis_state(redis) == before


def test_an_unsupported_debian_is_refused_by_the_first_task_and_changes_nothing(host):
    # The host says it is Debian 11, where Ansible reads it (/etc/os-release, /etc/debian_version).
    before = state(host)
    host.check_output(
        "cp -a /etc/debian_version /root/debian_version.keep && "
        "cp /usr/lib/os-release /root/os-release.11 && "
        "sed -i -e 's/^VERSION_ID=.*/VERSION_ID=\"11\"/' -e 's/^VERSION=.*/VERSION=\"11 (bullseye)\"/' "
        "-e 's/^VERSION_CODENAME=.*/VERSION_CODENAME=bullseye/' /root/os-release.11 && "
        "rm /etc/os-release && cp /root/os-release.11 /etc/os-release && echo 11.11 > /etc/debian_version"
    )
    try:
        output = run_role_failing({})
    finally:
        host.check_output(
            "ln -sf ../usr/lib/os-release /etc/os-release && "
            "mv /root/debian_version.keep /etc/debian_version && rm /root/os-release.11"
        )
    assert (
        "koinonia.platform.pgbouncer supports Debian 13 (trixie) and Debian 12 (bookworm); "
        "data-db runs Debian 11"
    ) in output, output[-3000:]
    assert state(host) == before


def run_role_failing(extra_vars, role="pgbouncer", hostname="data-db"):
    """Run bad_input.yml (a role, by default on the database host) with extra_vars; it must
    fail on that host having changed nothing. Returns its output on one line."""
    env = dict(
        os.environ,
        ANSIBLE_ROLES_PATH=str(PROJECT_DIR / "roles"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )
    cmd = [
        "ansible-playbook",
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        str(SCENARIO_DIR / "bad_input.yml"),
    ]
    cmd += ["-e", json.dumps({"koinonia_bad_input_role": role, **extra_vars})]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0, output
    recap = re.search(
        rf"{hostname}\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=0\s+failed=1", output
    )
    assert recap, output[-3000:]
    assert recap.group(2) == "0"
    return output
