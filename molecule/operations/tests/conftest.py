"""Shared helpers of the `operations` scenario: the operators' playbooks run against the
scenario's inventory, releases built from copies of the source, and the stack's state.

Everything the tests need (hosts, demo passwords, health check knobs) is read from
molecule.yml and the stack base it links (molecule/resources/stack/inventory.yml), so there
is one source of truth."""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import sys
import uuid

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "tests"))
from stackclient import https_request, wait_for
from stackops import (  # noqa: F401 - recap, run_playbook, task_results: for the test modules
    docker_host,
    recap,
    run_playbook,
    task_results,
    upstream_status,
)
from stackvars import stack_group_vars

SCENARIO_DIR = pathlib.Path(
    os.environ.get("MOLECULE_SCENARIO_DIRECTORY") or pathlib.Path(__file__).resolve().parent.parent
)
PROJECT_DIR = SCENARIO_DIR.parent.parent
MOLECULE = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
PLATFORMS = MOLECULE["platforms"]
GROUP_VARS = stack_group_vars(SCENARIO_DIR)
CFG = GROUP_VARS["all"]
LB_VARS = GROUP_VARS["loadbalancers"]

LB = next(p["name"] for p in PLATFORMS if "loadbalancers" in p["groups"])
APPS = [p["name"] for p in PLATFORMS if "app_servers" in p["groups"]]
DB = next(p["name"] for p in PLATFORMS if "databases" in p["groups"])
REDIS = next(p["name"] for p in PLATFORMS if "redis" in p["groups"])
HTTPS_PORT = next(
    int(spec.split(":")[1])
    for p in PLATFORMS
    for spec in p.get("published_ports", [])
    if spec.endswith(":443")
)
# The health checker's knobs: how long a peer takes to be marked up again, with slack for
# a loaded 2-CPU CI machine.
UP_DEADLINE = LB_VARS["nginx_healthcheck_interval"] * (LB_VARS["nginx_healthcheck_rise"] + 1) + 20


def https(method, path, body=None, token=None, headers=None, timeout=20):
    return https_request(HTTPS_PORT, method, path, body, token, headers, timeout)


def login(email: str, password: str) -> str:
    r = https("POST", "/api/auth/login", {"email": email, "password": password})
    assert r.status == 200, r
    return r.json()["token"]


@pytest.fixture(scope="session")
def lb():
    return docker_host(LB)


@pytest.fixture(scope="session")
def apps():
    return {name: docker_host(name) for name in APPS}


@pytest.fixture(scope="session")
def db():
    return docker_host(DB)


@pytest.fixture(scope="session")
def owner_token():
    return login(CFG["koinonia_owner_email"], CFG["koinonia_owner_password"])


@pytest.fixture(scope="session")
def group_id(owner_token):
    """A group of five opted-in members: the load's POSTs text it."""
    tag = uuid.uuid4().hex[:8]
    r = https("POST", "/api/groups", {"name": f"Ops {tag}"}, token=owner_token)
    assert r.status == 201, r
    gid = r.json()["id"]
    member_ids = []
    while len(member_ids) < 5:
        # A random number each (a rerun on the same stack must not collide with its members).
        phone = f"+1202555{random.randint(0, 9999):04d}"
        r = https(
            "POST",
            "/api/members",
            {"firstName": f"Op{len(member_ids)}", "lastName": tag, "phone": phone},
            token=owner_token,
        )
        if r.status == 409:
            continue
        assert r.status in (200, 201), r
        member_ids.append(r.json()["id"])
    r = https("POST", f"/api/groups/{gid}/members", {"memberIds": member_ids}, token=owner_token)
    assert r.status in (200, 201, 204), r
    return gid


# --- releases --------------------------------------------------------------------------------


def source_copy(
    tmp_path: pathlib.Path, marker: str, broken_readiness: bool = False
) -> pathlib.Path:
    """A copy of the release sources (app_source_paths) that makes a new release: the marker
    changes the release hash; broken_readiness makes GET /health/ready answer 503 for good."""
    dest = tmp_path / f"src-{marker}"
    dest.mkdir()
    shutil.copy2(PROJECT_DIR / "pyproject.toml", dest / "pyproject.toml")
    readme = (PROJECT_DIR / "README.md").read_text()
    (dest / "README.md").write_text(readme + f"\n<!-- release {marker} -->\n")
    shutil.copytree(
        PROJECT_DIR / "app" / "koinonia",
        dest / "app" / "koinonia",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    if broken_readiness:
        health = dest / "app" / "koinonia" / "routes" / "health.py"
        text = health.read_text()
        needle = "    ready = database_ok and redis_ok\n"
        assert text.count(needle) == 1, "health.py changed: update the broken-release patch"
        health.write_text(text.replace(needle, "    ready = False  # a broken release\n"))
    return dest


def deploy_args(source: pathlib.Path) -> list[str]:
    return ["-e", f"app_source_dir={source}", "-e", f"app_source_git_dir={PROJECT_DIR}"]


def current_release(host) -> str:
    return host.check_output("readlink -f /opt/koinonia/current").rsplit("/", 1)[-1]


def serving_release(host) -> str:
    out = host.check_output("curl -s --max-time 5 http://127.0.0.1:3000/health/detailed")
    return json.loads(out)["release"]


def all_serving(lb) -> bool:
    peers = upstream_status(lb)
    return len(peers) == len(APPS) and all(
        p["status"] == "up" and not p["drained"] for p in peers.values()
    )


@pytest.fixture
def healthy_stack(lb):
    """Every app server up and in rotation before and after the test."""
    wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
    yield
    wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving after the test")


def psql(db, sql: str, database: str = "koinonia") -> str:
    """One query on the database host as postgres (peer authentication), unaligned output."""
    return db.check_output(
        "runuser -u postgres -- psql --no-psqlrc -X -tA -d %s -c %s", database, sql
    ).strip()


@pytest.fixture(scope="session")
def releases() -> dict[str, str]:
    """Release names the tests make, shared in order: converged, new, broken."""
    return {}


def db_now(db) -> str:
    return psql(db, "SELECT now()")


def messages_since(db, since: str) -> tuple[int, int]:
    """(messages, distinct Idempotency-Keys) the load generator's POSTs recorded since then."""
    # `since` is PostgreSQL's own now(), read back by db_now().
    where = f"created_at >= '{since}' AND content LIKE 'Operations test %'"
    sql = "SELECT count(*) || ' ' || count(DISTINCT idempotency_key) FROM message WHERE " + where  # noqa: S608
    row = psql(db, sql)
    total, keys = row.split()
    return int(total), int(keys)
