"""The app served by real Hypercorn (``koinonia serve``) on a loopback port, for the tests
that reach it as an outside client does (Schemathesis, a generated client)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.servers import TestServers, free_port

APP_DIR = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def served_app(servers: TestServers, log_path: Path) -> AsyncIterator[str]:
    """The base URL of ``koinonia serve`` (one worker) on the test servers, its errors logged
    to ``log_path``; stopped after."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOINONIA_")}
    env.update(
        PYTHONPATH=str(APP_DIR),
        KOINONIA_DATABASE_URL=servers.pgbouncer.url,
        KOINONIA_MIGRATION_DATABASE_URL=servers.postgres.url,
        KOINONIA_REDIS_URL=servers.redis.url,
        KOINONIA_MAX_BODY_BYTES=str(64 * 1024),
        KOINONIA_LOG_LEVEL="WARNING",
        KOINONIA_ACCESS_LOG="false",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "koinonia.cli",
        "serve",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        env=env,
        stdout=log,
        stderr=log,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
            for _ in range(600):
                if proc.returncode is not None:
                    raise RuntimeError(f"koinonia serve exited with {proc.returncode}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError("koinonia serve did not become ready in 60 s")
        yield base_url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
