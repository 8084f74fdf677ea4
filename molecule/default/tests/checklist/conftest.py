"""Shared helpers of the `default` scenario: the deployment checklist on the whole stack.

Two ways in:
  * HTTP(S) from the controller through the balancer's published ports (127.0.0.1:18643 for
    443, 18680 for 80), with Python's http.client: the way a client meets the service. TLS is
    not verified (the scenario's certificate is self-signed; nginx_tls_mode: selfsigned).
  * Commands inside the containers (docker exec through testinfra's docker backend): nginx -t,
    the internal status port 8080, openssl s_client, direct requests to an app server on
    :3000, systemctl to stop/start services.

Everything the tests need to know (hosts, demo passwords, the SMALL health check knobs) is
read from molecule.yml and the stack base it links
(molecule/resources/stack/inventory.yml), so there is one source of truth.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import re
import shlex
import sys
import time
import uuid

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "resources" / "tests"))
from stackclient import Resp, curl, https_request
from stackops import docker_host, upstream_status
from stackvars import stack_group_vars

SCENARIO_DIR = pathlib.Path(
    os.environ.get("MOLECULE_SCENARIO_DIRECTORY") or pathlib.Path(__file__).resolve().parents[2]
)
MOLECULE = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
PLATFORMS = MOLECULE["platforms"]
GROUP_VARS = stack_group_vars(SCENARIO_DIR)
CFG = GROUP_VARS["all"]
LB_VARS = GROUP_VARS["loadbalancers"]

LB = next(p["name"] for p in PLATFORMS if "loadbalancers" in p["groups"])
APPS = [p["name"] for p in PLATFORMS if "app_servers" in p["groups"]]
DB = next(p["name"] for p in PLATFORMS if "databases" in p["groups"])
REDIS = next(p["name"] for p in PLATFORMS if "redis" in p["groups"])


def _published(container_port: int) -> int:
    for p in PLATFORMS:
        for spec in p.get("published_ports", []):
            _host_ip, host_port, cport = spec.split(":")
            if int(cport) == container_port:
                return int(host_port)
    raise KeyError(container_port)


HTTPS_PORT = _published(443)
HTTP_PORT = _published(80)

# The scenario's small health check knobs (molecule.yml), and deadlines derived from them:
# the probes a state change takes, plus one interval and a probe timeout of slack, plus a
# fixed allowance for a loaded CI machine (2 CPUs shared by several scenarios).
INTERVAL = LB_VARS["nginx_healthcheck_interval"]
FALL = LB_VARS["nginx_healthcheck_fall"]
RISE = LB_VARS["nginx_healthcheck_rise"]
PROBE_TIMEOUT = LB_VARS["nginx_healthcheck_timeout"]
LOAD_SLACK = 6
DOWN_DEADLINE = INTERVAL * (FALL + 1) + PROBE_TIMEOUT + LOAD_SLACK
UP_DEADLINE = INTERVAL * (RISE + 1) + PROBE_TIMEOUT + LOAD_SLACK

ISO8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


# --- hosts --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lb():
    return docker_host(LB)


@pytest.fixture(scope="session")
def apps():
    return {name: docker_host(name) for name in APPS}


@pytest.fixture(scope="session")
def redis_host():
    return docker_host(REDIS)


# --- HTTP from the controller through the balancer ----------------------------------------


def https(
    method: str,
    path: str,
    body=None,
    token: str | None = None,
    headers: dict | None = None,
    timeout: float = 20,
) -> Resp:
    """One request through the balancer's HTTPS listener, on a new connection."""
    return https_request(HTTPS_PORT, method, path, body, token, headers, timeout)


def plain_http(method: str, path: str, timeout: float = 20) -> Resp:
    conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=timeout)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return Resp(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def login(email: str, password: str, deadline: float = 15) -> str:
    """A bearer token. Retries only a 429 (the auth rate limit left by an earlier test)."""
    end = time.monotonic() + deadline
    while True:
        r = https("POST", "/api/auth/login", {"email": email, "password": password})
        if r.status != 429 or time.monotonic() > end:
            break
        time.sleep(float(r.headers.get("retry-after", "1")))
    assert r.status == 200, r
    return r.json()["token"]


# Function scope: a token must not outlive a test (2.4 restarts Redis, where sessions live).
@pytest.fixture
def operator_token():
    return login(CFG["koinonia_operator_email"], CFG["koinonia_operator_password"])


@pytest.fixture
def owner_token():
    return login(CFG["koinonia_owner_email"], CFG["koinonia_owner_password"])


def unique(prefix: str = "ck") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- inside the containers ----------------------------------------------------------------


def app_direct(lb, app: str, path: str):
    """(status, parsed JSON) of GET http://<app>:3000<path>, asked from the balancer host."""
    status, _, body = curl(lb, f"http://{app}:3000{path}")
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def wait_for(predicate, deadline: float, step: float = 0.5, what: str = "condition", on_each=None):
    """Polls predicate() until it returns a truthy value (returned) or `deadline` s pass."""
    start = time.monotonic()
    last = None
    while True:
        if on_each:
            on_each()
        last = predicate()
        if last:
            return last
        if time.monotonic() - start > deadline:
            raise AssertionError(f"{what}: not met within {deadline}s (last: {last!r})")
        time.sleep(step)


def access_log_upstreams(lb, marker: str) -> dict[str, str]:
    """{request id: upstream_addr} of the balancer's access log lines whose id has `marker`."""
    out = lb.check_output(f"grep -F {shlex.quote(marker)} /var/log/nginx/access.log || true")
    result = {}
    for line in out.splitlines():
        entry = json.loads(line)
        result[entry["request_id"]] = entry["upstream_addr"]
    return result


def peer_addresses(lb) -> dict[str, str]:
    """{"ip:port": peer name} from /upstream_status."""
    return {p["address"]: name for name, p in upstream_status(lb).items()}


def all_up(lb) -> bool:
    peers = upstream_status(lb)
    return len(peers) == len(APPS) and all(p["status"] == "up" for p in peers.values())


def stack_healthy(lb, apps) -> bool:
    if not all_up(lb):
        return False
    for name in APPS:
        if app_direct(lb, name, "/health/ready")[0] != 200:
            return False
        if apps[name].run("systemctl is-active koinonia-api koinonia-worker").rc != 0:
            return False
    return https("GET", "/health/detailed").status == 200


@pytest.fixture
def healthy_stack(lb, apps):
    """Every app server ready and up in the balancer, before the test and after it."""
    wait_for(lambda: stack_healthy(lb, apps), UP_DEADLINE + 30, what="stack healthy before test")
    yield
    wait_for(lambda: stack_healthy(lb, apps), UP_DEADLINE + 30, what="stack healthy after test")
