"""Graceful shutdown of ``koinonia serve`` (real Hypercorn in a subprocess): on SIGTERM the
readiness probe turns 503 at once, a request in flight completes, the process exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port

APP_DIR = Path(__file__).resolve().parents[1]


async def _wait_until(predicate, attempts: int = 300, pause: float = 0.05) -> None:
    for _ in range(attempts):
        if await predicate():
            return
        await asyncio.sleep(pause)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_and_finishes_in_flight_request(servers, migrated, tmp_path, workers):
    port = free_port()
    marker = tmp_path / "slow-started"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOINONIA_")}
    env.update(
        PYTHONPATH=str(APP_DIR),
        SLOW_MARKER=str(marker),
        KOINONIA_DATABASE_URL=servers.pgbouncer.url,
        KOINONIA_MIGRATION_DATABASE_URL=servers.postgres.url,
        KOINONIA_REDIS_URL=servers.redis.url,
        KOINONIA_SHUTDOWN_DRAIN_SECONDS="2",
        KOINONIA_GRACEFUL_TIMEOUT="20",
        KOINONIA_LOG_LEVEL="WARNING",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "koinonia.cli",
        "serve",
        "--app",
        "tests.slow_app:create",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/health/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await _wait_until(up, attempts=600)

            in_flight = asyncio.create_task(http.get("/test/slow", params={"seconds": "3"}))
            await _wait_until(lambda: asyncio.sleep(0, marker.exists()))

            proc.send_signal(signal.SIGTERM)

            async def not_ready() -> bool:
                # A new connection each time, as a load balancer's probe would make.
                async with httpx.AsyncClient(base_url=base, timeout=5) as probe:
                    response = await probe.get("/health/ready")
                    if response.status_code == 503:
                        assert response.json()["ready"] is False
                        return True
                    return False

            await _wait_until(not_ready)

            response = await in_flight
            assert response.status_code == 200
            assert response.json() == {"slept": 3.0}

        code = await asyncio.wait_for(proc.wait(), 60)
        stderr = (await proc.stderr.read()).decode()
        assert code == 0, stderr
        assert "Traceback" not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
