"""Health probes: exact shapes of the deployment checklist, and failure answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import datetime

import psycopg
from quart import Quart

from koinonia.web.state import get_state
from tests.conftest import app_using_redis
from tests.servers import DB_NAME, DB_PASSWORD, DB_USER


@contextlib.asynccontextmanager
async def pgbouncer_admin(servers) -> AsyncIterator[psycopg.AsyncConnection]:
    """PgBouncer's admin console (PAUSE, DISABLE, KILL...) as the test user."""
    admin = await psycopg.AsyncConnection.connect(
        host="127.0.0.1",
        port=servers.pgbouncer.port,
        user=DB_USER,
        password=DB_PASSWORD,
        dbname="pgbouncer",
        autocommit=True,
    )
    try:
        yield admin
    finally:
        await admin.close()


def _is_iso(value: str) -> bool:
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


async def test_health_shape(client):
    response = await client.get("/health")
    assert response.status_code == 200
    body = await response.get_json()
    assert set(body) == {"status", "timestamp"}
    assert body["status"] == "ok"
    assert _is_iso(body["timestamp"])


async def test_detailed_all_ok(client):
    response = await client.get("/health/detailed")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "redis": "ok", "application": "ok"}
    assert _is_iso(body["timestamp"])


async def test_detailed_names_the_deployed_release(app, client):
    state = get_state(app)
    original = state.settings
    # One app lifespan per process (Tortoise), so swap the running app's settings.
    state.settings = original.model_copy(update={"release": "1.2.3-abc123"})
    try:
        body = await (await client.get("/health/detailed")).get_json()
    finally:
        state.settings = original
    assert body["release"] == "1.2.3-abc123"


async def test_ready_and_live(client):
    response = await client.get("/health/ready")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["ready"] is True and _is_iso(body["timestamp"])

    response = await client.get("/health/live")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["alive"] is True
    assert isinstance(body["uptime"], int | float) and body["uptime"] >= 0


async def test_redis_down_fails_detailed_and_ready(app, client, spare_redis):
    async with app_using_redis(app, spare_redis.url):
        assert (await client.get("/health/ready")).status_code == 200
        with spare_redis.down():
            detailed = await client.get("/health/detailed")
            assert detailed.status_code == 503
            body = await detailed.get_json()
            assert body["status"] == "unhealthy"
            assert body["checks"] == {"database": "ok", "redis": "failed", "application": "ok"}

            ready = await client.get("/health/ready")
            assert ready.status_code == 503
            assert (await ready.get_json())["ready"] is False

            # /health and /health/live do no dependency I/O.
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/health/live")).status_code == 200
        # Redis restarted on the same port: the client reconnects.
        assert (await client.get("/health/ready")).status_code == 200


async def test_ready_503_while_shutting_down(app: Quart, client):
    state = get_state(app)
    state.shutting_down = True
    try:
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert (await response.get_json())["ready"] is False
        detailed = await (await client.get("/health/detailed")).get_json()
        assert detailed["checks"]["application"] == "failed"
    finally:
        state.shutting_down = False


async def test_request_id_echoed_or_generated(client):
    response = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    generated = await client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert generated.headers["X-Request-ID"] not in ("", "bad id with spaces")


def test_json_log_lines_carry_the_request_id():
    import json
    import logging

    from koinonia.logging import JsonFormatter, request_id_var

    token = request_id_var.set("req-42")
    try:
        record = logging.LogRecord(
            "koinonia.test", logging.INFO, __file__, 1, "hello %s", ("x",), None
        )
        record.migration = "m1"
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "hello x"
    assert line["requestId"] == "req-42"
    assert line["level"] == "INFO" and line["migration"] == "m1"


async def test_unresponsive_redis_cannot_hang_the_probe(app, client):
    """A Redis that accepts connections but never answers: the probe still answers 503."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with app_using_redis(app, f"redis://127.0.0.1:{port}/0"):
            # The bound only guards the test run; the app's own timeout is 1 s.
            response = await asyncio.wait_for(client.get("/health/ready"), 30)
            assert response.status_code == 503
            detailed = await asyncio.wait_for(client.get("/health/detailed"), 30)
            assert (await detailed.get_json())["checks"]["redis"] == "failed"
        assert accepted  # the probe really connected to the silent server
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_paused_database_makes_ready_503_without_hanging(client, servers):
    """PgBouncer PAUSE: queries wait forever. The probe must answer 503, not hang."""
    async with pgbouncer_admin(servers) as admin:
        await admin.execute(f"PAUSE {DB_NAME}")
        try:
            ready = await asyncio.wait_for(client.get("/health/ready"), 20)
            assert ready.status_code == 503
            detailed = await asyncio.wait_for(client.get("/health/detailed"), 20)
            assert (await detailed.get_json())["checks"] == {
                "database": "failed",
                "redis": "ok",
                "application": "ok",
            }
        finally:
            await admin.execute(f"RESUME {DB_NAME}")
    assert (await client.get("/health/ready")).status_code == 200


async def test_response_names_the_app_server_that_answered(client):
    response = await client.get("/health")
    assert response.headers["X-Served-By"] == socket.gethostname()


async def test_database_refusing_connections_answers_503_with_retry_after_not_500(client, servers):
    """PgBouncer DISABLE + KILL: the pool's connections drop and new ones are refused. A
    request that needs the database answers 503 (retryable), never a 500."""
    async with pgbouncer_admin(servers) as admin:
        await admin.execute(f"DISABLE {DB_NAME}")
        await admin.execute(f"KILL {DB_NAME}")
        try:
            response = await asyncio.wait_for(
                client.post(
                    "/api/auth/register",
                    json={
                        "churchName": "Unreachable Chapel",
                        "email": "nobody-503@example.org",
                        "password": "long-enough-password",
                    },
                ),
                30,
            )
            body = await response.get_json()
            assert response.status_code == 503, body
            assert body["error"]["code"] == "service_unavailable"
            assert response.headers["Retry-After"].isdigit()
        finally:
            await admin.execute(f"ENABLE {DB_NAME}")
            await admin.execute(f"RESUME {DB_NAME}")
    assert (await client.get("/health/ready")).status_code == 200
