"""Bad input fails early with a message a person can act on, and changes nothing."""

import json
import os
import pathlib
import re
import subprocess

import pytest
from debian import postgresql_major, postgresql_unit

testinfra_hosts = ["data-db"]

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
PROJECT_DIR = SCENARIO_DIR.parent.parent


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
    return sums, pids


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


def run_role_failing(extra_vars, role="pgbouncer"):
    """Run bad_input.yml (a role of the database host) with extra_vars; it must fail on
    data-db having changed nothing. Returns its output on one line."""
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
    recap = re.search(r"data-db\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=0\s+failed=1", output)
    assert recap, output[-3000:]
    assert recap.group(2) == "0"
    return output
