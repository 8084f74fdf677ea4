"""Secret rotation (playbooks/rotate_secrets.yml): the operator changes the vault and names
what changed; the new passwords work everywhere, the old ones nowhere, and the load on the
balancer sees no failed request. Last in the scenario: it leaves the stack on passwords
that molecule.yml does not know."""

import uuid

import pytest
import yaml
from conftest import (
    APPS,
    CFG,
    HTTPS_PORT,
    REDIS,
    UP_DEADLINE,
    all_serving,
    db_now,
    docker_host,
    https,
    login,
    messages_since,
    run_playbook,
    task_results,
)
from load import BoundedLoad
from stackclient import wait_for


def redis_ping(host, user: str, password: str) -> str:
    # REDISCLI_AUTH, not -a: the password stays out of redis-cli's own arguments.
    return host.run(
        "REDISCLI_AUTH=%s redis-cli --no-auth-warning --user %s PING", password, user
    ).stdout.strip()


def psql_login(host, port: int, user: str, password: str, database: str, sql: str):
    return host.run(
        "PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql --no-psqlrc -X -tA "
        "-h 127.0.0.1 -p %s -U %s -d %s -c %s",
        password,
        str(port),
        user,
        database,
        sql,
    )


OLD = {
    k: CFG[k]
    for k in (
        "koinonia_db_password",
        "koinonia_redis_app_password",
        "koinonia_pgbouncer_admin_password",
    )
}


@pytest.fixture(scope="module")
def rotated(tmp_path_factory) -> tuple[dict, str]:
    """The operator's new vault values, and the extra-vars file (readable by its owner only)
    that stands for the edited vault in every run of this module."""
    tag = uuid.uuid4().hex[:8]
    new = {
        # Characters that need quoting in a URL, like the converged one.
        "koinonia_db_password": f"rot-{tag}-db/with:odd@chars",
        "koinonia_redis_app_password": f"rot-{tag}-redis-app",
        "koinonia_pgbouncer_admin_password": f"rot-{tag}-pgb-admin",
    }
    path = tmp_path_factory.mktemp("vault") / "rotated-secrets.yml"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(new))
    return new, f"@{path}"


def test_8_rotating_db_redis_and_pgbouncer_passwords_under_load_loses_no_request(
    lb, apps, db, owner_token, group_id, rotated, healthy_stack
):
    new, vault = rotated
    redis = docker_host(REDIS)
    assert redis_ping(redis, "koinonia", OLD["koinonia_redis_app_password"]) == "PONG"

    since = db_now(db)
    with BoundedLoad(HTTPS_PORT, owner_token, group_id) as load:
        run = run_playbook("rotate_secrets.yml", "-e", "rotate=db,redis,pgbouncer", "-e", vault)
        wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
    report = load.report
    print(f"secret rotation (db, redis, pgbouncer): {report.summary()}")

    assert run.returncode == 0, run.stdout[-6000:]
    # No secret in the operator's output.
    for secret in new.values():
        assert secret not in run.stdout
    # The app servers restarted one at a time, each drained first, without migrations.
    drains = task_results(run.stdout, "Take the peer out of rotation")
    assert [host for status, host in drains if status in ("ok", "changed")] == APPS, drains
    assert "Apply pending migrations" not in run.stdout or all(
        s == "skipping" for s, _ in task_results(run.stdout, "Apply pending migrations")
    )

    # Nothing lost, nothing twice. GETs: none failed. POSTs: the database password is the one
    # secret with a window (PostgreSQL keeps one password per role; README, Security model):
    # an app server not yet restarted cannot open a new connection to PgBouncer with the
    # old password. Such a POST is refused whole (503 + Retry-After, nothing written), and
    # sent again with its Idempotency-Key, as a client does, it makes its one message.
    assert report.sent >= 50, report.summary()
    failed_gets = [f for f in report.failures if " GET " in f]
    assert failed_gets == [], failed_gets
    assert all(" POST 503 " in f and "service_unavailable" in f for f in report.failures), (
        report.failures
    )
    retried = load.retry_failed_posts()
    assert all(200 <= status < 300 for _key, status in retried), retried
    print(
        f"secret rotation: {len(load.failed_keys)} POSTs refused during the database "
        f"password window, all recorded once on retry"
    )
    assert messages_since(db, since) == (report.posts, report.posts)

    # The new passwords work and the old ones are refused: Redis's app user ...
    assert redis_ping(redis, "koinonia", new["koinonia_redis_app_password"]) == "PONG"
    assert (
        "WRONGPASS"
        in redis.run(
            "REDISCLI_AUTH=%s redis-cli --no-auth-warning --user koinonia AUTH koinonia %s",
            new["koinonia_redis_app_password"],
            OLD["koinonia_redis_app_password"],
        ).stdout
    )
    # ... the database user, through PgBouncer and straight at PostgreSQL ...
    for port in (6432, 5432):
        ok = psql_login(db, port, "koinonia", new["koinonia_db_password"], "koinonia", "SELECT 1")
        assert ok.rc == 0 and ok.stdout.strip() == "1", (port, ok.stderr)
        refused = psql_login(
            db, port, "koinonia", OLD["koinonia_db_password"], "koinonia", "SELECT 1"
        )
        assert refused.rc != 0 and "authentication failed" in refused.stderr, port
    # ... and PgBouncer's admin console.
    admin = psql_login(
        db,
        6432,
        "pgbouncer_admin",
        new["koinonia_pgbouncer_admin_password"],
        "pgbouncer",
        "SHOW VERSION",
    )
    assert admin.rc == 0 and "PgBouncer" in admin.stdout, admin.stderr
    refused = psql_login(
        db,
        6432,
        "pgbouncer_admin",
        OLD["koinonia_pgbouncer_admin_password"],
        "pgbouncer",
        "SHOW VERSION",
    )
    assert refused.rc != 0
    # Every app server is ready on the new passwords (database and Redis both checked).
    for name, host in apps.items():
        ready = host.run(
            "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:3000/health/ready"
        )
        assert ready.stdout == "200", name


def test_8_revoking_sessions_logs_everyone_out(apps, owner_token, rotated):
    assert https("GET", "/api/auth/me", token=owner_token).status == 200
    run = run_playbook("rotate_secrets.yml", "-e", "rotate=sessions", "-e", rotated[1])
    assert run.returncode == 0, run.stdout[-6000:]
    assert task_results(run.stdout, "Delete every session in Redis") == [("changed", APPS[0])]
    # The deploy plays did not run: nothing restarted.
    assert task_results(run.stdout, "Take the peer out of rotation") == []

    assert https("GET", "/api/auth/me", token=owner_token).status == 401
    fresh = login(CFG["koinonia_owner_email"], CFG["koinonia_owner_password"])
    assert https("GET", "/api/auth/me", token=fresh).status == 200


def test_8_rotate_refuses_an_unknown_item_before_touching_a_host():
    run = run_playbook("rotate_secrets.yml", "-e", "rotate=db,sshkeys")
    assert run.returncode != 0
    assert "unknown: sshkeys" in run.stdout
    assert "Apply the PostgreSQL role" not in run.stdout
