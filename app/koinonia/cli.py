"""``koinonia`` command line: serve, worker, migrate, makemigrations, create-operator,
create-church, check.

Every command reads settings from the environment (see app/README.md); a missing or invalid
setting stops it with exit code 1 and a message naming the variable. Passwords are read from
stdin (``--password-stdin``) or prompted for, never taken as arguments (they would show in
``ps`` and shell history).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from koinonia.settings import Settings, SettingsError, load_settings


def _fail(message: str) -> int:
    print(f"koinonia: {message}", file=sys.stderr)
    return 1


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
    if len(password) < 8:
        raise ValueError("password must be at least 8 characters")
    return password


async def _with_db(settings: Settings, action: Callable[[], Awaitable[Any]]) -> Any:
    from koinonia.db import close_db, init_db

    ctx = await init_db(settings)
    try:
        return await action()
    finally:
        await close_db(ctx)


# --- commands ---------------------------------------------------------------------------


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from koinonia.logging import configure_logging
    from koinonia.server import serve

    overrides = {}
    if args.bind:
        overrides["bind"] = args.bind
    if args.workers:
        overrides["workers"] = args.workers
    if overrides:
        settings = settings.model_copy(update=overrides)
    configure_logging(settings.log_level)
    return serve(settings, args.app)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from koinonia.jobs import worker_main
    from koinonia.logging import configure_logging

    configure_logging(settings.log_level)
    worker_main(settings)
    return 0


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from koinonia.db import run_migrations
    from koinonia.logging import configure_logging

    configure_logging(settings.log_level)
    applied = asyncio.run(run_migrations(settings, lock_timeout=args.lock_timeout))
    print(orjson.dumps({"applied": applied}).decode())
    return 0


def cmd_makemigrations(args: argparse.Namespace) -> int:
    from koinonia.migrations_tool import make_migrations

    for line in asyncio.run(make_migrations(fresh=args.fresh, name=args.name)):
        print(line)
    return 0


def cmd_create_operator(settings: Settings, args: argparse.Namespace) -> int:
    from koinonia.services.auth import create_user

    password = _read_password(args)

    async def create() -> Any:
        return await create_user(email=args.email, password=password, church=None, is_operator=True)

    user = asyncio.run(_with_db(settings, create))
    print(orjson.dumps({"operatorId": str(user.id), "email": user.email}).decode())
    return 0


def cmd_create_church(settings: Settings, args: argparse.Namespace) -> int:
    from koinonia.services.auth import register_church

    password = _read_password(args)

    async def create() -> Any:
        return await register_church(
            church_name=args.name,
            email=args.owner_email,
            password=password,
            first_name=args.owner_first_name,
            last_name=args.owner_last_name,
        )

    church, user = asyncio.run(_with_db(settings, create))
    print(orjson.dumps({"churchId": str(church.id), "ownerId": str(user.id)}).decode())
    return 0


def cmd_revoke_sessions(settings: Settings, args: argparse.Namespace) -> int:
    """Log everyone out: delete every session in Redis (after a secret rotation or a breach)."""
    from redis.exceptions import RedisError

    from koinonia.stores.client import create_redis
    from koinonia.stores.sessions import revoke_all_sessions

    async def revoke() -> int:
        redis = create_redis(settings)
        try:
            return await revoke_all_sessions(redis)
        finally:
            await redis.aclose()

    try:
        revoked = asyncio.run(revoke())
    except (RedisError, OSError) as exc:
        return _fail(f"redis unreachable or refused the login (KOINONIA_REDIS_URL): {exc}")
    print(orjson.dumps({"revokedSessions": revoked}).decode())
    return 0


async def run_checks(settings: Settings) -> list[str]:
    """Connectivity and schema checks; returns the problems found (empty = healthy)."""
    from tortoise.migrations.api import plan

    from koinonia.db import close_db, init_db, ping_db, tortoise_config
    from koinonia.stores.client import create_redis, ping_redis

    problems: list[str] = []
    timeout = max(settings.health_check_timeout, 3.0)
    try:
        ctx = await asyncio.wait_for(init_db(settings), timeout)
    except Exception as exc:
        problems.append(f"database unreachable (KOINONIA_DATABASE_URL): {type(exc).__name__}")
    else:
        try:
            await ping_db(timeout)
        except Exception as exc:
            problems.append(f"database query failed: {type(exc).__name__}")
        finally:
            await close_db(ctx)

    redis = create_redis(settings)
    try:
        await ping_redis(redis, timeout)
    except Exception as exc:
        problems.append(f"redis unreachable (KOINONIA_REDIS_URL): {type(exc).__name__}")
    finally:
        await redis.aclose()

    from tortoise.context import TortoiseContext

    migration_ctx = TortoiseContext()
    with migration_ctx:
        try:
            steps = await asyncio.wait_for(
                plan(config=tortoise_config(settings, direct=True)), timeout * 2
            )
            pending = [line for line in steps if line.startswith("+")]
            if pending:
                problems.append(f"{len(pending)} migration(s) not applied (run `koinonia migrate`)")
        except Exception as exc:
            problems.append(
                f"migration database unreachable (KOINONIA_MIGRATION_DATABASE_URL): "
                f"{type(exc).__name__}"
            )
        finally:
            await migration_ctx.close_connections()
    return problems


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    import contextlib
    import io

    # tortoise's plan() prints the plan; keep stdout for our own verdict.
    with contextlib.redirect_stdout(io.StringIO()):
        problems = asyncio.run(run_checks(settings))
    if problems:
        for problem in problems:
            print(f"koinonia check: FAILED: {problem}", file=sys.stderr)
        return 1
    print("koinonia check: ok")
    return 0


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="koinonia", description="Koinonia church SMS service")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API (Hypercorn, N workers)")
    serve.add_argument("--bind", help="host:port (default KOINONIA_BIND)")
    serve.add_argument("--workers", type=int, help="worker processes (default KOINONIA_WORKERS)")
    serve.add_argument("--app", default="koinonia.app:asgi_app", help=argparse.SUPPRESS)

    sub.add_parser("worker", help="run the SAQ job worker and cron")

    migrate = sub.add_parser("migrate", help="apply migrations (safe on every deploy)")
    migrate.add_argument("--lock-timeout", type=float, default=300.0)

    make = sub.add_parser("makemigrations", help="(development) write migrations for model changes")
    make.add_argument(
        "--fresh",
        action="store_true",
        help="delete the existing migration files and write one initial migration",
    )
    make.add_argument("--name", help="migration name suffix")

    operator = sub.add_parser("create-operator", help="create a platform operator account")
    operator.add_argument("--email", required=True)
    operator.add_argument("--password-stdin", action="store_true")

    church = sub.add_parser("create-church", help="create a church and its owner")
    church.add_argument("--name", required=True)
    church.add_argument("--owner-email", required=True)
    church.add_argument("--owner-first-name", default="")
    church.add_argument("--owner-last-name", default="")
    church.add_argument("--password-stdin", action="store_true")

    sub.add_parser("check", help="check settings and connectivity; exit 1 with the reason")
    sub.add_parser("revoke-sessions", help="log everyone out (delete every session in Redis)")
    return parser


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "worker": cmd_worker,
    "migrate": cmd_migrate,
    "create-operator": cmd_create_operator,
    "create-church": cmd_create_church,
    "check": cmd_check,
    "revoke-sessions": cmd_revoke_sessions,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "makemigrations":
        return cmd_makemigrations(args)
    try:
        settings = load_settings()
    except SettingsError as exc:
        return _fail(str(exc))
    try:
        return COMMANDS[args.command](settings, args)
    except ValueError as exc:
        return _fail(str(exc))
    except Exception as exc:
        from koinonia.errors import ApiError

        if isinstance(exc, ApiError):
            return _fail(exc.message)
        raise


if __name__ == "__main__":
    sys.exit(main())
