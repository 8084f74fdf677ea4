"""Bad input fails early with a message a person can act on, and changes nothing."""

import os
import pathlib
import re
import subprocess

import pytest

testinfra_hosts = ["data-db"]

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
PROJECT_DIR = SCENARIO_DIR.parent.parent


def state(host):
    """What a run would touch: the config files and the running process."""
    files = [
        "/etc/pgbouncer/pgbouncer.ini",
        "/etc/pgbouncer/userlist.txt",
        "/etc/pgbouncer/pgbouncer-listen.ini",
    ]
    sums = {path: (host.file(path).sha256sum, host.file(path).mtime) for path in files}
    pid = host.run("systemctl show -p MainPID --value pgbouncer").stdout.strip()
    return sums, pid


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
    for name, value in extra_vars.items():
        cmd += ["-e", f"{name}={value}"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = " ".join((run.stdout + run.stderr).split())

    assert run.returncode != 0, output
    assert message in output, output[-3000:]
    recap = re.search(r"data-db\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=0\s+failed=1", output)
    assert recap, output[-3000:]
    assert recap.group(2) == "0"
    assert state(host) == before
