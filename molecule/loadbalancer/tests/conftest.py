"""Shared helpers for the loadbalancer scenario's tests.

Requests go through the balancer from inside lb-nginx (curl, openssl), or from the
controller to the published ports 127.0.0.1:18443 / 18480. The stand-in app servers
(files/lbtest_app.py) are reached directly on :3000 to read their hit counters.
The scenario sets small health check knobs: interval 1 s, fall 3, rise 2.
"""

import json
import pathlib
import sys
import time

import pytest
import testinfra

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "tests"))
from stackclient import curl  # noqa: F401 - used by the test modules

LB = "lb-nginx"
APPS = ["lb-app1", "lb-app2"]
BASE = "https://localhost"
INTERVAL, FALL, RISE = 1, 3, 2
# Deadline of a state change: the probes it takes, plus slack for a loaded CI machine.
DOWN_DEADLINE = INTERVAL * FALL + 8
UP_DEADLINE = INTERVAL * RISE + 8


@pytest.fixture(scope="module")
def lb():
    return testinfra.get_host(f"docker://{LB}")


@pytest.fixture(scope="module")
def apps():
    return {name: testinfra.get_host(f"docker://{name}") for name in APPS}


def upstream_status(lb):
    out = lb.check_output("curl -s http://127.0.0.1:8080/upstream_status")
    return {p["name"]: p for p in json.loads(out)["peers"]}


def wait_for(predicate, deadline, step=0.3, on_each=None):
    """Polls predicate() until true or the deadline (seconds) passes; returns elapsed time."""
    start = time.monotonic()
    while True:
        if on_each:
            on_each()
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > deadline:
            raise AssertionError(f"condition not met within {deadline}s")
        time.sleep(step)


def set_ready(apps, name, ready):
    flag = "/run/lbtest/not-ready"
    apps[name].run_expect([0], f"rm -f {flag}" if ready else f"touch {flag}")


def set_dependency_down(apps, name, down):
    """The stand-in answers as an app server with PostgreSQL/Redis unreachable: 503s."""
    flag = "/run/lbtest/dependency-down"
    apps[name].run_expect([0], f"touch {flag}" if down else f"rm -f {flag}")


def upstream(lb):
    """The whole /upstream_status document."""
    return json.loads(lb.check_output("curl -s http://127.0.0.1:8080/upstream_status"))


def set_drained(lb, name, drained):
    method = "PUT" if drained else "DELETE"
    out = lb.check_output(f"curl -s -X {method} http://127.0.0.1:8080/upstream_peers/{name}/drain")
    assert json.loads(out)["peers"][0]["drained"] is drained, out


def hits(lb):
    """Per-app hit counters, read directly from each stand-in app server."""
    return {
        name: json.loads(lb.check_output(f"curl -s http://{name}:3000/_lbtest/hits"))
        for name in APPS
    }


def reset_hits(lb):
    for name in APPS:
        lb.check_output(f"curl -s -X POST http://{name}:3000/_lbtest/reset")


@pytest.fixture
def all_peers_up(lb, apps):
    """Every peer ready and seen up by the checker, before and after the test."""

    def restore():
        for name, h in apps.items():
            set_ready(apps, name, True)
            set_dependency_down(apps, name, False)
            set_drained(lb, name, False)
            h.run_expect([0], "systemctl start lbtest-app")
        wait_for(
            lambda: all(p["status"] == "up" for p in upstream_status(lb).values()),
            UP_DEADLINE + INTERVAL * FALL,
        )

    restore()
    yield
    restore()
