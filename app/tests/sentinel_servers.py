"""A replicated Redis on loopback for the Sentinel tests: a master, a replica and three
Sentinels (quorum 2), real ``redis-server`` processes on free ports. With ``tls_dir`` (a
directory holding ``ca.pem``, ``server.pem`` and ``server.key``: ``make_test_certificates``)
every port is TLS only and replication and the Sentinels' links use TLS, as the redis role
sets them up when Redis's TLS is on."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import REDIS_BIN, _stop, free_port, wait_for_port

MASTER_NAME = "koinonia"
SENTINEL_PASSWORD = "test-sentinel-password-0123"  # test-only


@dataclass
class ReplicatedRedis:
    base: Path
    master_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    procs: list[subprocess.Popen] = field(default_factory=list)
    tls_dir: Path | None = None

    @property
    def sentinels(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def _spawn(self, name: str, args: list[str], port: int) -> None:
        log = open(self.base / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([str(REDIS_BIN), *args], stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        wait_for_port(port, proc=proc)

    def _redis_args(self, name: str, port: int) -> list[str]:
        workdir = self.base / name
        workdir.mkdir(parents=True, exist_ok=True)
        # A config file of its own: Sentinel's failover rewrites it (CONFIG REWRITE).
        conf = workdir / "redis.conf"
        conf.write_text(f"{self._listen(port)}bind 127.0.0.1\ndir {workdir}\n")
        return [str(conf), "--save", "", "--appendonly", "no", "--protected-mode", "no"]

    def _listen(self, port: int) -> str:
        if self.tls_dir is None:
            return f"port {port}\n"
        return (
            f"port 0\ntls-port {port}\ntls-replication yes\ntls-auth-clients no\n"
            f"tls-cert-file {self.tls_dir / 'server.pem'}\n"
            f"tls-key-file {self.tls_dir / 'server.key'}\n"
            f"tls-ca-cert-file {self.tls_dir / 'ca.pem'}\n"
        )

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self._spawn("master", self._redis_args("master", self.master_port), self.master_port)
        self._spawn(
            "replica",
            [
                *self._redis_args("replica", self.replica_port),
                "--replicaof",
                "127.0.0.1",
                str(self.master_port),
            ],
            self.replica_port,
        )
        for number, port in enumerate(self.sentinel_ports):
            conf = self.base / f"sentinel{number}.conf"
            conf.write_text(
                f"{self._listen(port)}bind 127.0.0.1\ndir {self.base}\n"
                f"requirepass {SENTINEL_PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            )
            self._spawn(f"sentinel{number}", [str(conf), "--sentinel"], port)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        self.procs.clear()


def make_test_certificates(directory: Path) -> Path:
    """A throw-away CA (ca.pem) and a certificate it signed for 127.0.0.1 and localhost
    (server.pem, server.key), with the openssl command line; test only."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=koinonia app tests CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2",
            "-extfile", "server.ext")  # fmt: skip
    return directory
