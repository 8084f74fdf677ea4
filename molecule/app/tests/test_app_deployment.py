"""Role `app` across the tier: one release everywhere, migrations once, the service works."""

import re
import time
import uuid

from conftest import APP_SERVERS, get_host, http

testinfra_hosts = ["app-data"]


def release_of(name):
    app = get_host(name)
    return app.file("/opt/koinonia/current").linked_to.rsplit("/", 1)[1], app


def test_every_app_server_runs_the_same_release():
    releases = {name: release_of(name)[0] for name in APP_SERVERS}
    assert len(set(releases.values())) == 1, releases
    commits = set()
    for name in APP_SERVERS:
        app = get_host(name)
        content = app.file("/opt/koinonia/current/RELEASE").content_string
        commits.add(re.search(r"^git_commit=(.*)$", content, re.MULTILINE).group(1))
    assert len(commits) == 1


def test_health_detailed_shows_the_release_on_every_app_server():
    seen = {}
    for name in APP_SERVERS:
        release, app = release_of(name)
        status, body = http(app, "GET", "/health/detailed")
        assert status == 200, body
        seen[name] = body["release"]
        assert release in seen[name]
    assert len(set(seen.values())) == 1


def test_migrations_ran_exactly_once(host):
    rows = host.check_output(
        "runuser -u postgres -- psql -X -At -d koinonia -c "
        "\"SELECT app || '.' || name || '=' || count(*) FROM tortoise_migrations "
        'GROUP BY app, name ORDER BY 1"'
    ).splitlines()
    assert rows, "no migration recorded"
    assert all(row.endswith("=1") for row in rows), rows


def test_pgbouncer_serves_the_app_servers(host, cfg):
    admin = "pgbouncer_admin"
    out = host.check_output(
        "PGPASSWORD=molecule-app-pgb-admin-0123 psql -X -At -h 127.0.0.1 -p 6432 "
        f"-U {admin} pgbouncer -c 'SHOW CLIENTS'"
    )
    clients = [
        line for line in out.splitlines() if line.split("|")[1:2] == [cfg["koinonia_db_user"]]
    ]
    assert clients, out


def test_smoke_register_login_member_group_message_sent_by_log_provider():
    app1, app2 = get_host("app-1"), get_host("app-2")
    suffix = uuid.uuid4().hex[:8]
    email = f"smoke-{suffix}@molecule.example.org"
    password = "smoke-password-123"
    status, body = http(
        app1,
        "POST",
        "/api/auth/register",
        {"churchName": f"Smoke {suffix}", "email": email, "password": password},
    )
    assert status == 201, body
    # Log in on the OTHER server: sessions live in Redis, shared by the tier.
    status, body = http(app2, "POST", "/api/auth/login", {"email": email, "password": password})
    assert status == 200, body
    token = body["token"]

    member_ids = []
    for i, opt_in in enumerate([True, True, False]):
        status, body = http(
            app2,
            "POST",
            "/api/members",
            {"firstName": f"M{i}", "phone": f"+1202555{1000 + i:04d}", "optInSms": opt_in},
            token,
        )
        assert status == 201, body
        member_ids.append(body["id"])
    status, body = http(app1, "POST", "/api/groups", {"name": f"Choir {suffix}"}, token)
    assert status == 201, body
    group_id = body["id"]
    status, body = http(
        app1, "POST", f"/api/groups/{group_id}/members", {"memberIds": member_ids}, token
    )
    assert status in (200, 201, 204), body

    status, body = http(
        app2,
        "POST",
        "/api/messages",
        {"content": "Smoke test: choir at 7pm", "targetType": "group", "targetIds": [group_id]},
        token,
    )
    assert status == 202, body
    message_id = body["id"]

    deadline = time.monotonic() + 90
    deliveries = []
    while time.monotonic() < deadline:
        status, body = http(app1, "GET", f"/api/messages/{message_id}", token=token)
        assert status == 200, body
        deliveries = body["deliveries"]
        if deliveries and all(d["status"] == "sent" for d in deliveries):
            break
        time.sleep(2)
    # Exactly one delivery per opted-in member, each sent (by the log provider).
    assert sorted(d["memberId"] for d in deliveries) == sorted(member_ids[:2]), deliveries
    assert all(d["status"] == "sent" for d in deliveries), deliveries
    assert all(d["providerMessageId"] for d in deliveries), deliveries
