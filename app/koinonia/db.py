"""Tortoise ORM configuration, start-up/shutdown and the migration runner.

The app talks to PostgreSQL through PgBouncer in transaction mode. asyncpg's prepared-statement
cache is ``Settings.db_statement_cache_size``: 0 through PgBouncer 1.18, which cannot follow
named prepared statements from one server connection to the next; PgBouncer 1.21+ can (its
``max_prepared_statements``), and then a cached statement saves a round trip. Migrations connect
DIRECTLY to PostgreSQL (``Settings.migration_url``) because they hold a session-level advisory
lock, which must never go through a transaction pooler.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from tortoise import Tortoise, connections
from tortoise.backends.asyncpg.client import AsyncpgDBClient
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.context import TortoiseContext

from koinonia.deadline import within
from koinonia.settings import Settings

log = logging.getLogger(__name__)

APP_LABEL = "models"
MODEL_MODULES = ["koinonia.models.core", "koinonia.models.messaging"]
MIGRATIONS_MODULE = "koinonia.migrations"
CONNECTION_NAME = "default"

# Any 64-bit number works as long as every host uses the same one.
MIGRATION_LOCK_KEY = 0x6B6F696E6F6E6961  # "koinonia"


def _asyncpg_url(url: str) -> str:
    """Tortoise picks the backend from the scheme; normalise postgres:// to asyncpg://."""
    parts = urlsplit(url)
    if parts.scheme in {"postgres", "postgresql"}:
        parts = parts._replace(scheme="asyncpg")
    return urlunsplit(parts)


class PgBouncerConnection(asyncpg.Connection):
    """No reset query when a connection goes back to the pool.

    asyncpg's default (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) exists to
    clear session state; through PgBouncer in transaction mode it would run on whichever
    server connection PgBouncer picks, clearing nothing of ours and costing a round trip on
    every release. The app never creates session state (no SET, LISTEN or advisory locks).
    """

    def get_reset_query(self) -> str:
        return ""


class FairPool(asyncpg.Pool):
    """asyncpg's pool, handing connections out in the order they were asked for.

    asyncpg keeps its idle connections in an ``asyncio.LifoQueue``: a released connection
    wakes the longest waiter, but a request that asks in the meantime takes it first, and the
    woken waiter queues again at the back (MagicStack/asyncpg#1247). Under a burst larger
    than the pool, most requests pass at once while a few starve: 64 connections on one app
    server's uncached member page gave p50 20 ms and p95 560 ms. A FIFO semaphore of the
    pool's size in front of it serves waiters in arrival order (``asyncio.Semaphore`` is
    first-come first-served from Python 3.11.1 on, and Debian 12 ships 3.11.2).
    """

    def __init__(self, *args: Any, max_size: int, **kwargs: Any) -> None:
        super().__init__(*args, max_size=max_size, **kwargs)
        self._turns = asyncio.Semaphore(max_size)
        # The connections handed out through a turn; a double or foreign release gives
        # none back.
        self._turn_holders: set[PoolConnectionProxy] = set()

    # asyncpg's acquire() and its `async with` form both come through _acquire; both methods
    # keep asyncpg's signatures.
    async def _acquire(self, timeout: float | None) -> PoolConnectionProxy:  # noqa: ASYNC109
        left = timeout
        if timeout is None:
            await self._turns.acquire()
        else:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(self._turns.acquire(), timeout)
            left = max(timeout - (loop.time() - started), 0.001)
        try:
            proxy = await super()._acquire(left)
        except BaseException:
            self._turns.release()
            raise
        self._turn_holders.add(proxy)
        return proxy

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            await super().release(connection, timeout=timeout)
        finally:
            if connection in self._turn_holders:
                self._turn_holders.discard(connection)
                self._turns.release()


class FairPoolClient(AsyncpgDBClient):
    """Tortoise's asyncpg client on a FairPool."""

    async def create_pool(self, **kwargs: Any) -> asyncpg.Pool:
        # asyncpg.create_pool builds a Pool with its own defaults for what Tortoise leaves
        # out; Pool itself has none, so they are read from create_pool's signature.
        return await FairPool(None, **(_CREATE_POOL_DEFAULTS | kwargs))


_CREATE_POOL_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(asyncpg.create_pool).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}


# Tortoise finds a backend's client class as `client_class` in the module named by the
# connection's "engine".
client_class = FairPoolClient


def _expand(url: str) -> dict[str, Any]:
    """Tortoise's URL parsing, plus percent-decoding of user and database (it decodes only the
    password); deployment tooling percent-encodes all three."""
    config = expand_db_url(_asyncpg_url(url))
    credentials = config["credentials"]
    for key in ("user", "database"):
        if credentials.get(key):
            credentials[key] = unquote(credentials[key])
    return config


def _connection_config(url: str, settings: Settings, *, pooled: bool) -> dict[str, Any]:
    config = _expand(url)
    credentials = config["credentials"]
    credentials.update(
        minsize=settings.db_pool_min if pooled else 1,
        maxsize=settings.db_pool_max if pooled else 2,
        timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
        statement_cache_size=settings.db_statement_cache_size,
    )
    if pooled:
        credentials["connection_class"] = PgBouncerConnection
        config["engine"] = __name__  # client_class: the pool that serves waiters in order
    return config


def tortoise_config(settings: Settings, *, direct: bool = False) -> dict[str, Any]:
    """The Tortoise config: both model modules in one app; ``direct`` bypasses PgBouncer."""
    url = settings.migration_url if direct else settings.database_url.get_secret_value()
    return {
        "connections": {CONNECTION_NAME: _connection_config(url, settings, pooled=not direct)},
        "apps": {
            APP_LABEL: {
                "models": list(MODEL_MODULES),
                "default_connection": CONNECTION_NAME,
                "migrations": MIGRATIONS_MODULE,
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


async def init_db(settings: Settings) -> TortoiseContext:
    """Open the ORM for this process (call from the app/worker start-up, close with close_db).

    The context is registered as Tortoise's process-wide fallback because Hypercorn runs
    requests in tasks that do not inherit the lifespan task's context variables.
    """
    ctx = TortoiseContext()
    # Current only while initialising (model set-up looks it up); the global fallback
    # registered by init is what request tasks then resolve to.
    with ctx:
        await ctx.init(config=tortoise_config(settings), _enable_global_fallback=True)
    return ctx


async def close_db(ctx: TortoiseContext | None = None) -> None:
    if ctx is not None:
        await ctx.close_connections()
    else:
        await Tortoise.close_connections()


async def ping_db(timeout_seconds: float) -> None:
    """Raise unless the database answers ``SELECT 1`` within ``timeout_seconds``."""
    await within(connections.get(CONNECTION_NAME).execute_query("SELECT 1"), timeout_seconds)


def pool_stats() -> dict[str, int] | None:
    """Size and idle count of the asyncpg pool, for metrics; None before the pool exists."""
    try:
        client = connections.get(CONNECTION_NAME)
    except Exception:
        return None
    pool = getattr(client, "_pool", None)
    if pool is None:
        return None
    return {"size": pool.get_size(), "idle": pool.get_idle_size(), "max": pool.get_max_size()}


def _asyncpg_connect_kwargs(url: str, timeout: float) -> dict[str, Any]:
    credentials = _expand(url)["credentials"]
    return {
        "host": credentials.get("host"),
        "port": credentials.get("port"),
        "user": credentials.get("user"),
        "password": credentials.get("password"),
        "database": credentials.get("database"),
        "timeout": timeout,
        "statement_cache_size": 0,
    }


async def run_migrations(
    settings: Settings, *, lock_timeout: float = 300.0, lock_key: int = MIGRATION_LOCK_KEY
) -> list[str]:
    """Apply pending migrations exactly once even when several hosts run this together.

    A session advisory lock on a dedicated DIRECT connection serialises the runners: the first
    applies, the others wait, then find nothing left to apply. Returns the applied names.
    """
    from tortoise.migrations.api import migrate

    lock_conn = await asyncpg.connect(
        **_asyncpg_connect_kwargs(settings.migration_url, settings.db_connect_timeout)
    )
    applied: list[str] = []
    try:
        await lock_conn.execute("SET lock_timeout = 0")
        await asyncio.wait_for(
            lock_conn.execute("SELECT pg_advisory_lock($1)", lock_key), lock_timeout
        )
        log.info("migration lock acquired")

        def progress(event: str, app_label: str, name: str) -> None:
            if event == "apply_done":
                applied.append(f"{app_label}.{name}")
                log.info("migration applied", extra={"migration": f"{app_label}.{name}"})

        ctx = TortoiseContext()
        with ctx:
            try:
                await migrate(config=tortoise_config(settings, direct=True), progress=progress)
            finally:
                await ctx.close_connections()
    finally:
        try:
            await lock_conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
        finally:
            await lock_conn.close()
    return applied


async def fetch_row(query: str, *args: Any) -> asyncpg.Record | None:
    """The first row of a query, through the ORM's connection (the current transaction's
    inside ``in_transaction``), for reads that need no models: no query building, no model
    construction, and a constant text asyncpg can keep prepared where its cache is on."""
    async with connections.get(CONNECTION_NAME).acquire_connection() as connection:
        return await connection.fetchrow(query, *args)
