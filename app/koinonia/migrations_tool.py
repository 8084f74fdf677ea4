"""Development helper behind ``koinonia makemigrations``: write migrations from the models.

Needs no database: Tortoise's autodetector compares the models with the migration files.
``fresh=True`` deletes the existing migration files first and writes one initial migration —
the way to go while nothing has been released (one clean initial migration per release).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from tortoise.context import TortoiseContext
from tortoise.migrations.autodetector import MigrationAutodetector
from tortoise.migrations.writer import MigrationWriter, format_migration_name

from koinonia.db import APP_LABEL, MIGRATIONS_MODULE, MODEL_MODULES

# Never connected to: the autodetector reads models and files only.
_OFFLINE_URL = "asyncpg://offline:offline@127.0.0.1:1/offline"


def migrations_dir() -> Path:
    package = importlib.import_module(MIGRATIONS_MODULE)
    return Path(next(iter(package.__path__)))


async def pending_changes() -> list[MigrationWriter]:
    """The migrations the models need beyond the files (nothing written)."""
    apps_config = {
        APP_LABEL: {
            "models": list(MODEL_MODULES),
            "default_connection": "default",
            "migrations": MIGRATIONS_MODULE,
        }
    }
    config = {"connections": {"default": _OFFLINE_URL}, "apps": apps_config}
    ctx = TortoiseContext()
    with ctx:
        await ctx.init(config=config, init_connections=False)
        assert ctx.apps is not None
        return await MigrationAutodetector(ctx.apps, apps_config).changes()


async def make_migrations(*, fresh: bool = False, name: str | None = None) -> list[str]:
    directory = migrations_dir()
    if fresh:
        for path in directory.glob("[0-9][0-9][0-9][0-9]_*.py"):
            path.unlink()
        importlib.invalidate_caches()
    writers = await pending_changes()
    if not writers:
        return ["No changes detected"]
    lines = []
    for writer in writers:
        if name:
            number = int(writer.name.split("_", 1)[0])
            writer.name = format_migration_name(number, name)
        path = writer.write()
        lines.append(f"Created {writer.app_label}.{writer.name}: {path}")
    return lines
