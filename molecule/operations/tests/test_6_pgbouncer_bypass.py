"""playbooks/pgbouncer_bypass.yml (the runbook's "Disable PgBouncer"): the app servers go
straight to PostgreSQL and back, one at a time, without a failed request."""

from conftest import (
    APPS,
    HTTPS_PORT,
    UP_DEADLINE,
    all_serving,
    db_now,
    messages_since,
    run_playbook,
)
from load import BoundedLoad
from stackclient import wait_for


def database_port(host) -> str:
    # Only the port is read from the environment file (it holds the password).
    return host.check_output(
        r"sed -n 's/^KOINONIA_DATABASE_URL=.*@[^:]*:\([0-9]*\)\/.*/\1/p' /etc/koinonia/koinonia.env"
    )


def test_6_bypass_points_the_app_servers_at_postgresql_and_back(
    lb, apps, db, owner_token, group_id, healthy_stack
):
    assert {database_port(h) for h in apps.values()} == {"6432"}
    since = db_now(db)
    with BoundedLoad(HTTPS_PORT, owner_token, group_id) as load:
        direct = run_playbook("pgbouncer_bypass.yml", "-e", "pgbouncer_bypass=true")
        wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
        ports_direct = {name: database_port(h) for name, h in apps.items()}
        back = run_playbook("pgbouncer_bypass.yml", "-e", "pgbouncer_bypass=false")
        wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
    report = load.report
    print(f"pgbouncer bypass and back: {report.summary()}")

    assert direct.returncode == 0, direct.stdout[-4000:]
    assert ports_direct == dict.fromkeys(APPS, "5432")
    assert back.returncode == 0, back.stdout[-4000:]
    assert {database_port(h) for h in apps.values()} == {"6432"}
    assert report.failed == 0, report.failures[:20]
    assert messages_since(db, since) == (report.posts, report.posts)


def test_6_bypass_without_a_direction_is_refused():
    run = run_playbook("pgbouncer_bypass.yml")
    assert run.returncode != 0
    assert "-e pgbouncer_bypass=true" in run.stdout
