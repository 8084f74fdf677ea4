"""Real PostgreSQL 15, PgBouncer (transaction mode) and Redis on loopback, for the tests.

Each server runs from the Debian binaries in its own temporary directory on a free port.
PostgreSQL and PgBouncer refuse to run as root, so when the tests run as root they are
started as the ``postgres`` system user (the directory is handed to that user first).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path(os.environ.get("KOINONIA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PGBOUNCER_BIN = Path(os.environ.get("KOINONIA_TEST_PGBOUNCER", "/usr/sbin/pgbouncer"))
REDIS_BIN = Path(os.environ.get("KOINONIA_TEST_REDIS", "/usr/bin/redis-server"))

DB_USER = "koinonia"
DB_PASSWORD = "koinonia-test-password"
DB_NAME = "koinonia"
PG_SUPERUSER = "postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _service_user() -> tuple[int, int] | None:
    """(uid, gid) to drop to when running as root; None when already unprivileged."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _chown_tree(path: Path, ids: tuple[int, int] | None) -> None:
    if ids is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, *ids)
        for name in dirs + files:
            os.chown(os.path.join(root, name), *ids)


def _run_as(ids: tuple[int, int] | None):  # type: ignore[no-untyped-def]
    if ids is None:
        return None
    uid, gid = ids

    def drop() -> None:
        os.setgid(gid)
        os.setgroups([])
        os.setuid(uid)

    return drop


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class PostgresServer:
    base: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgres://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{DB_NAME}"

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={PG_SUPERUSER} dbname={dbname}"

    def start(self) -> None:
        ids = _service_user()
        data = self.base / "data"
        self.base.mkdir(parents=True, exist_ok=True)
        _chown_tree(self.base, ids)
        subprocess.run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            preexec_fn=_run_as(ids),
        )
        # Local superuser over TCP without a password; everyone else uses SCRAM.
        hba = data / "pg_hba.conf"
        hba.write_text(
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "local all all trust\n"
        )
        self.proc = subprocess.Popen(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.base}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=open(self.base / "postgres.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            preexec_fn=_run_as(ids),
        )
        wait_for_port(self.port, proc=self.proc)
        self._wait_ready()
        self.psql(
            f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}';"
            f"CREATE DATABASE {DB_NAME} OWNER {DB_USER};"
        )

    def _wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.superuser_dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def psql(self, sql: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.superuser_dsn(dbname), autocommit=True) as conn:
            for statement in filter(None, (s.strip() for s in sql.split(";"))):
                conn.execute(statement)  # type: ignore[arg-type]

    def create_database(self, name: str) -> str:
        """A fresh empty database owned by the app user; returns its direct URL."""
        self.psql(f'CREATE DATABASE "{name}" OWNER {DB_USER}')
        return f"postgres://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        # SIGINT = "fast" shutdown: disconnect clients, do not wait for them.
        _stop(self.proc, signal.SIGINT)


@dataclass
class PgBouncerServer:
    base: Path
    postgres: PostgresServer
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgres://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{DB_NAME}"

    def url_for(self, dbname: str) -> str:
        return f"postgres://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        ids = _service_user()
        self.base.mkdir(parents=True, exist_ok=True)
        # PgBouncer authenticates clients itself from this list (plain secret -> it can
        # do SCRAM to both sides), then logs in to PostgreSQL with the same credentials.
        (self.base / "userlist.txt").write_text(f'"{DB_USER}" "{DB_PASSWORD}"\n')
        (self.base / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.postgres.port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.base}\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.base / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 500\n"
            "default_pool_size = 40\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.base / 'pgbouncer.log'}\n"
            f"pidfile = {self.base / 'pgbouncer.pid'}\n"
            "admin_users = koinonia\n"
        )
        _chown_tree(self.base, ids)
        os.chmod(self.base / "userlist.txt", 0o600)
        self.proc = subprocess.Popen(
            [str(PGBOUNCER_BIN), str(self.base / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / "pgbouncer.stderr", "wb"),  # noqa: SIM115
            preexec_fn=_run_as(ids),
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)


@dataclass
class RedisServer:
    base: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                str(REDIS_BIN),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.base),
                "--protected-mode",
                "no",
            ],
            stdout=open(self.base / "redis.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        _stop(self.proc)

    def restart(self) -> None:
        """Same port again, empty data: what clients see after a Redis crash and restart."""
        self.stop()
        self.start()

    @contextlib.contextmanager
    def down(self):  # type: ignore[no-untyped-def]
        """Stop Redis for the duration of the block, then start it again on the same port."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@dataclass
class TestServers:
    root: Path
    postgres: PostgresServer
    pgbouncer: PgBouncerServer
    redis: RedisServer

    @classmethod
    def start(cls) -> TestServers:
        root = Path(tempfile.mkdtemp(prefix="koinonia-test-"))
        # The postgres user must traverse into its own subdirectories.
        os.chmod(root, 0o755)  # noqa: S103
        postgres = PostgresServer(root / "postgres")
        pgbouncer = PgBouncerServer(root / "pgbouncer", postgres)
        redis = RedisServer(root / "redis")
        servers = cls(root, postgres, pgbouncer, redis)
        try:
            postgres.start()
            pgbouncer.start()
            redis.start()
        except BaseException:
            servers.stop()
            raise
        return servers

    def stop(self) -> None:
        for server in (self.redis, self.pgbouncer, self.postgres):
            with contextlib.suppress(Exception):
                server.stop()
        if not os.environ.get("KOINONIA_TEST_KEEP_SERVERS"):
            shutil.rmtree(self.root, ignore_errors=True)
