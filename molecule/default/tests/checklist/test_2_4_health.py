"""Checklist phase 2.4, Health Check Validation: the four endpoints through NGINX with the
exact shapes, and the "stop Redis" test (detailed 503 with redis failed, readiness 503 on
every app server, the balancer takes them out, everything recovers when Redis is back)."""

import time

import pytest

from .conftest import (
    APPS,
    CFG,
    DOWN_DEADLINE,
    ISO8601,
    UP_DEADLINE,
    app_direct,
    https,
    login,
    stack_healthy,
    upstream_status,
    wait_for,
)


def test_2_4_health_shape_through_nginx():
    r = https("GET", "/health")
    assert r.status == 200
    body = r.json()
    assert set(body) == {"status", "timestamp"}
    assert body["status"] == "ok"
    assert ISO8601.match(body["timestamp"]), body


def test_2_4_health_detailed_shape_through_nginx():
    r = https("GET", "/health/detailed")
    assert r.status == 200, r
    body = r.json()
    assert set(body) == {"status", "checks", "timestamp", "release"}
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "redis": "ok", "application": "ok"}
    assert ISO8601.match(body["timestamp"])


def test_2_4_every_app_server_runs_the_same_deployed_release(lb, apps):
    """Runbook: "all three servers run the same code" is one command: /health/detailed names
    the release, which is the one the current symlink points at on each host."""
    releases = set()
    for app in APPS:
        status, body = app_direct(lb, app, "/health/detailed")
        assert status == 200, body
        current = apps[app].check_output("readlink -f /opt/koinonia/current").rsplit("/", 1)[-1]
        assert body["release"] == current, (app, body["release"], current)
        releases.add(body["release"])
    assert len(releases) == 1, releases


def test_2_4_health_ready_shape_through_nginx():
    r = https("GET", "/health/ready")
    assert r.status == 200, r
    body = r.json()
    assert set(body) == {"ready", "timestamp"}
    assert body["ready"] is True
    assert ISO8601.match(body["timestamp"])


def test_2_4_health_live_shape_through_nginx():
    r = https("GET", "/health/live")
    assert r.status == 200, r
    body = r.json()
    assert set(body) == {"alive", "uptime", "timestamp"}
    assert body["alive"] is True
    assert isinstance(body["uptime"], (int, float)) and body["uptime"] > 0
    assert ISO8601.match(body["timestamp"])


def _detailed_via_nginx_says_redis_failed():
    """The response when it is the app's 503 with redis failed (else None)."""
    resp = https("GET", "/health/detailed")
    if resp.status != 503:
        return None
    body = resp.json()
    if body.get("status") == "unhealthy" and body.get("checks") == {
        "database": "ok",
        "redis": "failed",
        "application": "ok",
    }:
        return resp
    return None


def _ready_is_503(lb, app):
    answer = app_direct(lb, app, "/health/ready")
    return answer if answer[0] == 503 else None


def test_2_4_stop_redis_detailed_503_ready_503_everywhere_then_recovers(
    lb, apps, redis_host, healthy_stack
):
    """Small knobs (interval/fall/rise from molecule.yml): the balancer reacts in seconds."""
    redis_host.run_expect([0], "systemctl stop redis-server")
    try:
        # Through NGINX, at once (before the checker has taken every server out).
        seen = wait_for(
            _detailed_via_nginx_says_redis_failed,
            5,
            step=0.2,
            what="/health/detailed 503 with redis failed via NGINX",
        )
        assert ISO8601.match(seen.json()["timestamp"])

        # On every app server directly: detailed 503 redis failed, ready 503, live still 200.
        for app in APPS:
            status, body = wait_for(
                lambda a=app: _ready_is_503(lb, a), 10, what=f"{app} /health/ready 503"
            )
            assert body["ready"] is False
            status, body = app_direct(lb, app, "/health/detailed")
            assert status == 503
            assert body["checks"] == {"database": "ok", "redis": "failed", "application": "ok"}
            assert body["status"] == "unhealthy"
            status, body = app_direct(lb, app, "/health/live")
            assert status == 200 and body["alive"] is True

        # The checks take down every server whose readiness fails ("NGINX can remove backend
        # on health check failure"). With all of them down for a dependency they share, the
        # balancer keeps routing to them (panic routing, roles/nginx/README.md "Health
        # semantics"): a request gets the app's own 503 at once, not a hang, and the first
        # request after Redis returns is served without waiting for `rise`.
        wait_for(
            lambda: all(p["status"] == "down" for p in upstream_status(lb).values()),
            DOWN_DEADLINE,
            what="all peers down",
        )
        start = time.monotonic()
        r = https("GET", "/health/detailed")
        assert time.monotonic() - start < 5
        assert r.status == 503
        assert r.json()["checks"]["redis"] == "failed"
        assert r.headers["x-served-by"] in APPS
    finally:
        redis_host.run_expect([0], "systemctl start redis-server")

    # Recovery: every server ready again, back in the balancer, 200 through NGINX.
    wait_for(
        lambda: all(app_direct(lb, a, "/health/ready")[0] == 200 for a in APPS),
        30,
        what="every app server ready again",
    )
    wait_for(
        lambda: all(p["status"] == "up" for p in upstream_status(lb).values()),
        UP_DEADLINE,
        what="all peers back up",
    )
    r = https("GET", "/health/detailed")
    assert r.status == 200, r
    assert r.json()["checks"] == {"database": "ok", "redis": "ok", "application": "ok"}
    assert https("GET", "/health/ready").status == 200


@pytest.mark.parametrize("app", APPS)
def test_2_4_worker_and_api_survive_the_redis_outage(apps, lb, app):
    # Runs after the outage test: the SAQ worker (cron + sending) must still be running, not
    # failed for good after losing Redis (a restart limit would leave it dead).
    wait_for(
        lambda: apps[app].run("systemctl is-active koinonia-worker koinonia-api").rc == 0,
        30,
        what=f"{app} services active after the Redis outage",
    )
    assert stack_healthy(lb, apps)


def test_2_4_redis_restart_keeps_sessions(lb, apps, redis_host, healthy_stack):
    """Sessions live in Redis (AOF on): a restart must not log everyone out. A session is
    written in a MULTI/EXEC transaction, which is what the AOF replay must restore (a clean
    shutdown fsyncs the AOF first)."""
    token = login(CFG["koinonia_owner_email"], CFG["koinonia_owner_password"])
    assert https("GET", "/api/auth/me", token=token).status == 200
    redis_host.run_expect([0], "systemctl restart redis-server")
    wait_for(
        lambda: all(app_direct(lb, a, "/health/ready")[0] == 200 for a in APPS),
        30,
        what="every app server ready after the Redis restart",
    )
    wait_for(
        lambda: all(p["status"] == "up" for p in upstream_status(lb).values()),
        UP_DEADLINE,
        what="all peers up after the Redis restart",
    )
    r = https("GET", "/api/auth/me", token=token)
    assert r.status == 200, f"session lost over a Redis restart: {r}"
