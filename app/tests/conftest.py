"""Shared fixtures: real servers, settings, a migrated database and a running app.

Fixtures (all async ones run on the one session event loop):

* ``servers``        - TestServers: ``.postgres`` (direct), ``.pgbouncer``, ``.redis``
                       (``.redis.down()`` context manager stops Redis for a block).
* ``settings``       - Settings pointing the app at PgBouncer, migrations at PostgreSQL.
* ``migrated``       - the session database with every migration applied.
* ``app``            - the Quart app with its lifespan running (DB pool, Redis client).
* ``client``         - a Quart test client for ``app``.
* ``redis``          - a raw redis.asyncio client on the test Redis (assertions/cleanup).
* ``church_a``, ``church_b`` - a freshly registered church with its owner logged in:
                       ``.headers`` (bearer auth), ``.church_id``, ``.user_id``, ``.email``,
                       ``.password``, ``.token``.
* ``operator``       - a platform operator logged in (same shape, church_id None).
* ``make_settings(**overrides)`` - Settings for the test servers with overrides.
* ``spare_redis``    - a separate RedisServer (function scope) to stop/start freely;
                       with ``app_using_redis(app, spare_redis.url)`` the running app uses it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr
from quart import Quart
from quart.typing import TestClientProtocol
from redis.asyncio import Redis

from koinonia.app import create_app
from koinonia.db import run_migrations
from koinonia.metrics import get_metrics
from koinonia.settings import Settings
from koinonia.web.state import get_state

# The messaging fixtures (a local fake Twilio, SAQ workers, webhook settings) live in their
# own module; importing them here makes them available to every test module by name.
from tests.messaging_fixtures import (  # noqa: F401
    fake_twilio,
    fake_twilio_server,
    make_worker,
    twilio_provider,
    webhook_settings,
)
from tests.servers import RedisServer, TestServers


@pytest.fixture(scope="session")
def servers() -> Iterator[TestServers]:
    started = TestServers.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def make_settings(servers: TestServers) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": servers.pgbouncer.url,
            "migration_database_url": servers.postgres.url,
            "redis_url": servers.redis.url,
            "environment": "test",
            "db_pool_min": 1,
            "db_pool_max": 10,
            "health_check_timeout": 1.0,
            "redis_socket_timeout": 1.0,
            "max_body_bytes": 64 * 1024,
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture(scope="session")
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> Settings:
    await run_migrations(settings)
    return settings


@pytest.fixture(scope="session")
async def app(migrated: Settings) -> AsyncIterator[Quart]:
    quart_app = create_app(migrated)
    async with quart_app.test_app():
        yield quart_app


@pytest.fixture
def client(app: Quart) -> TestClientProtocol:
    return app.test_client()


@pytest.fixture
async def redis(servers: TestServers) -> AsyncIterator[Redis]:
    client = Redis.from_url(servers.redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@dataclass
class LoggedIn:
    church_id: str | None
    user_id: str
    email: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def register_church(client: TestClientProtocol, name: str = "Grace Chapel") -> LoggedIn:
    email = f"owner-{uuid.uuid4().hex[:12]}@example.org"
    password = "correct horse battery staple"
    response = await client.post(
        "/api/auth/register",
        json={
            "churchName": name,
            "email": email,
            "password": password,
            "firstName": "Olive",
            "lastName": "Owner",
        },
    )
    assert response.status_code == 201, await response.get_data(as_text=True)
    body = await response.get_json()
    return LoggedIn(
        church_id=body["user"]["churchId"],
        user_id=body["user"]["id"],
        email=email,
        password=password,
        token=body["token"],
    )


# Each registers through its own test client, so that the session cookie it receives does not
# silently authenticate the shared ``client`` (tests then send ``.headers`` explicitly).
@pytest.fixture
async def church_a(app: Quart) -> LoggedIn:
    return await register_church(app.test_client(), "Church A")


@pytest.fixture
async def church_b(app: Quart) -> LoggedIn:
    return await register_church(app.test_client(), "Church B")


@pytest.fixture
async def operator(app: Quart) -> LoggedIn:
    from koinonia.services.auth import create_user

    email = f"operator-{uuid.uuid4().hex[:12]}@example.org"
    password = "operator password 123"
    await create_user(email=email, password=password, church=None, is_operator=True)
    response = await app.test_client().post(
        "/api/auth/login", json={"email": email, "password": password}
    )
    assert response.status_code == 200
    body = await response.get_json()
    return LoggedIn(None, body["user"]["id"], email, password, body["token"])


async def church_user(app: Quart, church_id: str, role: str) -> LoggedIn:
    """A new user of ``church_id`` with ``role``, logged in."""
    from koinonia.models.core import Church, Role
    from koinonia.services.auth import create_user

    email = f"{role}-{uuid.uuid4().hex[:12]}@example.org"
    password = f"{role} password 123"
    church = await Church.get(id=church_id)
    await create_user(
        email=email, password=password, church=church, role=Role(role), first_name=role.title()
    )
    return await log_in(app, email, password)


async def log_in(app: Quart, email: str, password: str) -> LoggedIn:
    response = await app.test_client().post(
        "/api/auth/login", json={"email": email, "password": password}
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    user = body["user"]
    return LoggedIn(user["churchId"], user["id"], email, password, body["token"])


@pytest.fixture
def spare_redis(tmp_path) -> Iterator[RedisServer]:
    """A Redis of its own, to stop and start without disturbing the shared one (which the
    job queue and other tests' sessions live on)."""
    server = RedisServer(tmp_path / "spare-redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def app_using_redis(app: Quart, url: str, **overrides: Any) -> AsyncIterator[Quart]:
    """Point the running app's Redis client (sessions, cache, health) at ``url`` for a block
    (``overrides``: more settings of that client, e.g. ``redis_sentinels``)."""
    from koinonia.stores.cache import CacheService
    from koinonia.stores.client import create_redis
    from koinonia.stores.session_cache import RevocationListener, SessionCache

    state = get_state(app)
    saved = (state.redis, state.cache, state.session_cache, state.revocations)
    settings = state.settings.model_copy(update={"redis_url": SecretStr(url), **overrides})
    state.redis = create_redis(settings)
    state.cache = CacheService(state.redis, get_metrics(app), settings)
    # Sessions cached and revoked through that Redis too, as a process using it would.
    state.session_cache = SessionCache(settings.session_cache_seconds, settings.session_ttl_seconds)
    state.revocations = RevocationListener(
        create_redis(settings, reconnect=False), state.session_cache, state.cache.local
    )
    state.revocations.start()
    try:
        yield app
    finally:
        await state.revocations.stop()
        await state.redis.aclose()
        state.redis, state.cache, state.session_cache, state.revocations = saved
