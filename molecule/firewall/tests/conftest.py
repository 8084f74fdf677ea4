"""Shared helpers of the firewall scenario's Testinfra tests.

The firewalled host is fw-app; fw-lb and fw-worker connect to it. A connection the
firewall drops gets no answer at all, so `timeout` ends it (exit status 124); a connection
to an open port without a listener would be refused at once (status 1) instead.
"""

import os
import pathlib
import sys
import time

import pytest
import testinfra

# The helpers every scenario shares (molecule/resources/tests).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "tests"))

TARGET = "fw-app"
CONNECT_TIMEOUT = 3  # seconds a dropped connection attempt is given before it counts as dropped
DROPPED = 124  # exit status of timeout(1) when the command ran out of time
# Ports the tests listen on: SSH, API, PgBouncer, Redis, node exporter, etcd's client and
# peer ports, Redis Sentinel, and PostgreSQL (not served by fw-app, so no rule opens it).
PORTS = (22, 2379, 2380, 3000, 5432, 6379, 6432, 9100, 26379)


def other_host(name):
    """A Testinfra host other than the one the test module targets."""
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")


def connect(peer, port):
    """Exit status of one bounded TCP connection attempt from `peer` to fw-app:`port`."""
    command = f"timeout {CONNECT_TIMEOUT} bash -c '</dev/tcp/{TARGET}/{port}'"
    return other_host(peer).run(command).rc


def connects(peer, port, attempts=3):
    """True when `peer` reaches fw-app:`port` (a few attempts: containers are slow to answer)."""
    return any(connect(peer, port) == 0 for _ in range(attempts))


@pytest.fixture(scope="session")
def listeners():
    """A TCP listener on each of PORTS on fw-app (transient systemd units), up before use."""
    target = other_host(TARGET)
    for port in PORTS:
        unit = f"molecule-listen-{port}"
        if target.run(f"systemctl is-active --quiet {unit}").rc != 0:
            started = target.run(
                f"systemd-run --unit={unit} --collect python3 -m http.server {port} --bind 0.0.0.0"
            )
            assert started.rc == 0, started.stderr
    deadline = time.monotonic() + 60
    while True:
        listening = target.run("ss -Hltn").stdout
        missing = [p for p in PORTS if f"0.0.0.0:{p} " not in listening]
        if not missing:
            return PORTS
        assert time.monotonic() < deadline, f"no listener on {missing}: {listening}"
        time.sleep(1)
