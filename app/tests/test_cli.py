"""The ``koinonia`` CLI as operators run it: real subprocesses against the test servers."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import os
import sys
import uuid

import psycopg

from koinonia.db import MIGRATIONS_MODULE
from koinonia.migrations_tool import migrations_dir, pending_changes
from tests.servers import free_port

MIGRATION_FILES = sorted(p.stem for p in migrations_dir().glob("[0-9][0-9][0-9][0-9]_*.py"))


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOINONIA_")}
    env.update({f"KOINONIA_{k.upper()}": v for k, v in settings.items()})
    return env


async def _koinonia(*args: str, env: dict[str, str], stdin: bytes | None = None):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "koinonia.cli",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    return proc.returncode, out.decode(), err.decode()


def _fresh_db(servers) -> tuple[str, str]:
    name = f"cli_{uuid.uuid4().hex[:10]}"
    direct = servers.postgres.create_database(name)
    return direct, servers.pgbouncer.url_for(name)


def test_each_migration_depends_on_the_one_numbered_before_it():
    # One chain: two migrations on one parent (branches merged) would be applied in either
    # order, or refused by Tortoise as a conflict.
    assert MIGRATION_FILES[0] == "0001_initial"
    for previous, current in itertools.pairwise(MIGRATION_FILES):
        migration = importlib.import_module(f"{MIGRATIONS_MODULE}.{current}").Migration
        assert migration.dependencies == [("models", previous)], current


async def test_the_migrations_create_exactly_what_the_models_describe():
    assert [writer.name for writer in await pending_changes()] == []


async def test_two_concurrent_migrates_apply_exactly_once(servers):
    direct, pooled = _fresh_db(servers)
    env = _env(database_url=pooled, migration_database_url=direct, redis_url=servers.redis.url)
    first, second = await asyncio.gather(
        _koinonia("migrate", env=env), _koinonia("migrate", env=env)
    )
    assert first[0] == 0, first[2]
    assert second[0] == 0, second[2]
    applied = [json.loads(r[1].strip().splitlines()[-1])["applied"] for r in (first, second)]
    # One run applied everything, the other found nothing left.
    assert sorted(len(a) for a in applied)[0] == 0
    names = max(applied, key=len)
    # Every migration file, each once, in the order of their numbers.
    assert names == [f"models.{name}" for name in MIGRATION_FILES]

    with psycopg.connect(servers.postgres.superuser_dsn(direct.rsplit("/", 1)[1])) as conn:
        rows = conn.execute("SELECT app, name FROM tortoise_migrations").fetchall()
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes").fetchall()}
    assert len(rows) == len(names)
    assert {"church", "app_user", "member", "member_group", "group_membership"} <= tables
    assert {"member_church_opt_in_idx", "member_created_at_idx"} <= indexes

    # And running it again later is a no-op.
    code, out, err = await _koinonia("migrate", env=env)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"applied": []}


async def test_check_ok_when_everything_is_reachable(settings, migrated, servers):
    env = _env(
        database_url=servers.pgbouncer.url,
        migration_database_url=servers.postgres.url,
        redis_url=servers.redis.url,
    )
    code, out, err = await _koinonia("check", env=env)
    assert code == 0, err
    assert "ok" in out


async def test_check_names_missing_setting(servers):
    code, _out, err = await _koinonia("check", env=_env(redis_url=servers.redis.url))
    assert code == 1
    assert "missing required setting KOINONIA_DATABASE_URL" in err


async def test_check_names_unreachable_redis(servers, migrated):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = _env(
        database_url=servers.pgbouncer.url,
        migration_database_url=servers.postgres.url,
        redis_url=dead,
    )
    code, _out, err = await _koinonia("check", env=env)
    assert code == 1
    assert "redis unreachable" in err
    assert "database" not in err  # only the real problem is reported


async def test_check_reports_unapplied_migrations(servers):
    direct, pooled = _fresh_db(servers)
    env = _env(database_url=pooled, migration_database_url=direct, redis_url=servers.redis.url)
    code, _out, err = await _koinonia("check", env=env)
    assert code == 1
    assert "not applied" in err and "koinonia migrate" in err


async def test_create_operator_then_login(servers, migrated, client):
    env = _env(
        database_url=servers.pgbouncer.url,
        migration_database_url=servers.postgres.url,
        redis_url=servers.redis.url,
    )
    email = f"ops-{uuid.uuid4().hex[:8]}@example.org"
    code, out, err = await _koinonia(
        "create-operator", "--email", email, "--password-stdin", env=env, stdin=b"s3cret-pass\n"
    )
    assert code == 0, err
    assert "s3cret-pass" not in out + err
    assert json.loads(out)["email"] == email

    login = await client.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
    assert login.status_code == 200
    user = (await login.get_json())["user"]
    assert user["isOperator"] is True and user["churchId"] is None

    again = await _koinonia(
        "create-operator", "--email", email, "--password-stdin", env=env, stdin=b"s3cret-pass\n"
    )
    assert again[0] == 1 and "already exists" in again[2]


async def test_create_church(servers, migrated, client):
    env = _env(
        database_url=servers.pgbouncer.url,
        migration_database_url=servers.postgres.url,
        redis_url=servers.redis.url,
    )
    email = f"owner-{uuid.uuid4().hex[:8]}@example.org"
    code, out, err = await _koinonia(
        "create-church",
        "--name",
        "Hope Church",
        "--owner-email",
        email,
        "--password-stdin",
        env=env,
        stdin=b"owner-password\n",
    )
    assert code == 0, err
    created = json.loads(out)
    login = await client.post(
        "/api/auth/login", json={"email": email, "password": "owner-password"}
    )
    user = (await login.get_json())["user"]
    assert user["churchId"] == created["churchId"] and user["role"] == "owner"


async def test_concurrent_run_migrations_in_process_apply_once(servers, make_settings):
    from koinonia.db import run_migrations

    direct, pooled = _fresh_db(servers)
    settings = make_settings(database_url=pooled, migration_database_url=direct)
    results = await asyncio.gather(*(run_migrations(settings) for _ in range(3)))
    assert sorted(len(r) for r in results)[:2] == [0, 0]
    assert len(max(results, key=len)) >= 1


async def test_revoke_sessions_logs_everyone_out_and_keeps_other_keys(servers, spare_redis):
    from redis.asyncio import Redis

    from koinonia.stores.sessions import create_session, get_session, user_generation

    redis = Redis.from_url(spare_redis.url, decode_responses=True)
    try:
        tokens = []
        for user in (uuid.uuid4(), uuid.uuid4(), uuid.uuid4()):
            for _ in range(2):
                token, _data = await create_session(
                    redis,
                    user_id=user,
                    church_id=None,
                    role="admin",
                    is_operator=False,
                    ttl_seconds=600,
                    generation=await user_generation(redis, user),
                )
                tokens.append(token)
        await redis.set("cache:church:unrelated", "kept")
        env = _env(database_url=servers.pgbouncer.url_for("koinonia"), redis_url=spare_redis.url)

        # Every app process hears it, to drop the sessions it had cached.
        listener = redis.pubsub()
        await listener.subscribe("session-revocations")
        assert (await listener.get_message(timeout=5))["type"] == "subscribe"

        code, out, err = await _koinonia("revoke-sessions", env=env)

        assert code == 0, err
        published = await listener.get_message(ignore_subscribe_messages=True, timeout=5)
        await listener.aclose()
        assert published is not None and published["data"] == "*"
        assert json.loads(out.strip().splitlines()[-1]) == {"revokedSessions": 6}
        assert [await get_session(redis, t) for t in tokens] == [None] * 6
        assert [k async for k in redis.scan_iter(match="user-sessions:*")] == []
        assert await redis.get("cache:church:unrelated") == "kept"
    finally:
        await redis.aclose()


async def test_revoke_sessions_names_an_unreachable_redis_without_a_traceback(servers):
    env = _env(
        database_url=servers.pgbouncer.url_for("koinonia"),
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    code, _out, err = await _koinonia("revoke-sessions", env=env)
    assert code == 1
    assert "KOINONIA_REDIS_URL" in err
    assert "Traceback" not in err
