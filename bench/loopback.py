"""The service on loopback for the sections that need no `make up` stack: real PostgreSQL,
PgBouncer and Redis from app/tests/servers.py (the tests' launcher), `koinonia serve`, and
optionally the bare Quart hello-world and `koinonia worker` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, log

sys.path.insert(0, str(ROOT / "app" / "tests"))

from servers import TestServers, free_port, wait_for_port

BIN = Path(sys.executable).parent


def start_process(stack: ExitStack, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    stack.callback(stop)
    return proc


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}: {err}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


@dataclass
class Loopback:
    stack: ExitStack
    servers: TestServers
    env: dict[str, str]
    workers: int
    base: str = ""
    hello_base: str = ""
    app: subprocess.Popen | None = None
    job_workers: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def start(cls, stack: ExitStack, workers: int, hello: bool = True, **env: str) -> Loopback:
        log("loopback: starting PostgreSQL, PgBouncer and Redis (app/tests/servers.py)")
        servers = TestServers.start()
        stack.callback(servers.stop)
        full_env = (
            os.environ
            | {
                "KOINONIA_DATABASE_URL": servers.pgbouncer.url,
                "KOINONIA_MIGRATION_DATABASE_URL": servers.postgres.url,
                "KOINONIA_REDIS_URL": servers.redis.url,
                "KOINONIA_ENVIRONMENT": "production",
                "KOINONIA_COOKIE_SECURE": "false",
                "KOINONIA_LOG_LEVEL": "WARNING",
                "KOINONIA_WORKERS": str(workers),
            }
            | env
        )
        subprocess.run(
            [str(BIN / "koinonia"), "migrate"], env=full_env, check=True, capture_output=True
        )
        lb = cls(stack, servers, full_env, workers)
        app_port = free_port()
        lb.app = start_process(
            stack, [str(BIN / "koinonia"), "serve", "--bind", f"127.0.0.1:{app_port}"], full_env
        )
        lb.base = f"http://127.0.0.1:{app_port}"
        if hello:
            hello_port = free_port()
            proc = start_process(
                stack,
                [
                    str(BIN / "hypercorn"),
                    "--workers",
                    str(workers),
                    "--worker-class",
                    "uvloop",
                    "--bind",
                    f"127.0.0.1:{hello_port}",
                    "bench.hello:app",
                ],
                full_env | {"PYTHONPATH": str(ROOT)},
            )
            lb.hello_base = f"http://127.0.0.1:{hello_port}"
            wait_for_port(hello_port, proc=proc)
        wait_http(lb.base + "/health", lb.app)
        return lb

    def start_job_workers(self, count: int, **env: str) -> list[subprocess.Popen]:
        """`koinonia worker` x count; each stops (SIGTERM) with the stack or stop_job_workers."""
        procs = []
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    [str(BIN / "koinonia"), "worker"],
                    env=self.env | env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self.job_workers += procs
        self.stack.callback(self.stop_job_workers)
        return procs

    def stop_job_workers(self) -> None:
        for proc in self.job_workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.job_workers:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.job_workers = []
