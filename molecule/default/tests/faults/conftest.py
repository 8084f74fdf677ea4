"""Shared helpers of the `chaos` scenario: the stack's hosts, a bounded load that remembers
its failed POSTs, and the bookkeeping of what was sent, received, lost and duplicated.

Everything the tests need (hosts, demo passwords, health check knobs) is read from
molecule.yml and the stack base it links (molecule/resources/stack/inventory.yml), so there
is one source of truth.

"Sent exactly once" is observed where the SMS leaves the platform: the log provider
(app/koinonia/delivery/sms/log.py) counts EVERY call it receives, per delivery, in the
field ``delivery-<id>`` of the day's hash ``sms:log:calls:<UTC date>`` (no deduplication: a
second call is a second text, as with Twilio). A delivery is lost when it never ends ``sent`` with a call, duplicated by every
call beyond its first, unknown-left-unresolved when it is still ``unknown`` at the end.
"""

from __future__ import annotations

import http.client
import itertools
import os
import pathlib
import random
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "resources" / "tests"))
from load import BoundedLoad
from stackclient import https_request, tls_context, wait_for
from stackops import (  # noqa: F401 - run_playbook: for the test modules
    docker_host,
    run_playbook,
    upstream_status,
)
from stackvars import stack_group_vars

SCENARIO_DIR = pathlib.Path(
    os.environ.get("MOLECULE_SCENARIO_DIRECTORY") or pathlib.Path(__file__).resolve().parents[2]
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
# How long the health checker takes to mark a peer up (or down) again, with slack for a
# loaded 2-CPU CI machine.
UP_DEADLINE = LB_VARS["nginx_healthcheck_interval"] * (LB_VARS["nginx_healthcheck_rise"] + 1) + 30
DOWN_DEADLINE = (
    LB_VARS["nginx_healthcheck_interval"] + LB_VARS["nginx_healthcheck_timeout"]
) * LB_VARS["nginx_healthcheck_fall"] + 30
# Deliveries: thousands of them on 3 workers of a shared 2-CPU machine; a killed worker's
# claims turn `unknown` after the job timeout (60 s + 40 s) and are settled by the provider's
# record at the next minute's sweep, or sent again once no call given up on can still reach
# the log provider (120 s after the claim) if it has none.
SEND_DEADLINE = 600
# Settled deliveries: how long `unknown` ones get to be settled by the minute's sweeps.
SETTLE_DEADLINE = 240
LOAD_TIMEOUT = 30  # each load request's own timeout: none may hang past it


def https(method, path, body=None, token=None, headers=None, timeout=30):
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
def redis():
    return docker_host(REDIS)


@pytest.fixture(scope="session")
def owner_token():
    return login(CFG["koinonia_owner_email"], CFG["koinonia_owner_password"])


@pytest.fixture(scope="session")
def group_id(owner_token):
    """A group of five opted-in members: the load's POSTs text it."""
    tag = uuid.uuid4().hex[:8]
    r = https("POST", "/api/groups", {"name": f"Chaos {tag}"}, token=owner_token)
    assert r.status == 201, r
    gid = r.json()["id"]
    prefix = phone_prefix()
    member_ids = []
    for i in range(5):
        r = https(
            "POST",
            "/api/members",
            {"firstName": f"Ch{i}", "lastName": tag, "phone": f"{prefix}{i:04d}"},
            token=owner_token,
        )
        assert r.status in (200, 201), r
        member_ids.append(r.json()["id"])
    r = https("POST", f"/api/groups/{gid}/members", {"memberIds": member_ids}, token=owner_token)
    assert r.status in (200, 201, 204), r
    return gid


AREA_CODES = (202, 206, 212, 303, 312, 404, 415, 503, 617, 702)


def phone_prefix() -> str:
    """+1, an area code and a random exchange: 10,000 valid numbers unlikely to be taken."""
    return f"+1{random.choice(AREA_CODES)}{random.randint(200, 999)}"


# --- the stack's state ------------------------------------------------------------------------


def peer_of(lb, app: str) -> str:
    """The balancer's peer name (host:port) of app server `app`."""
    names = [n for n in upstream_status(lb) if n.split(":")[0] == app]
    if not names:  # peers by address: resolve the container's name on the balancer
        address = lb.check_output("getent hosts %s", app).split()[0]
        names = [n for n in upstream_status(lb) if n.split(":")[0] == address]
    assert len(names) == 1, (app, list(upstream_status(lb)))
    return names[0]


def peer_state(lb, app: str) -> str:
    return upstream_status(lb)[peer_of(lb, app)]["status"]


def all_serving(lb) -> bool:
    peers = upstream_status(lb)
    return len(peers) == len(APPS) and all(
        p["status"] == "up" and not p["drained"] for p in peers.values()
    )


@pytest.fixture
def healthy_stack(lb, apps):
    """Every app server ready, up and in rotation before and after the test."""
    wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving")
    yield
    for name, host in apps.items():
        wait_for(lambda h=host: ready_status(h) == 200, 120, what=f"{name} ready after the test")
    wait_for(lambda: all_serving(lb), UP_DEADLINE, what="every app server serving after the test")


def ready_status(app) -> int:
    """GET /health/ready on the app server itself (0: no answer within 5 s)."""
    out = app.run(
        "curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:3000/health/ready"
    ).stdout.strip()
    return int(out) if out.isdigit() else 0


def unit(host, name: str) -> dict[str, str]:
    """MainPID, NRestarts, ActiveState and SubState of a systemd unit."""
    out = host.check_output(
        "systemctl show -p MainPID -p NRestarts -p ActiveState -p SubState %s", name
    )
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def unit_pids(host, name: str) -> list[int]:
    """Every process of the unit (its main process and the children in its cgroup)."""
    out = host.run("grep -l '^0::.*/%s$' /proc/[0-9]*/cgroup 2>/dev/null", f"{name}.service").stdout
    return sorted(int(line.split("/")[2]) for line in out.split())


def psql(db, sql: str, database: str = "koinonia") -> str:
    """One statement on the database host as postgres (peer authentication), unaligned."""
    return db.check_output(
        "runuser -u postgres -- psql --no-psqlrc -X -v ON_ERROR_STOP=1 -tA -d %s -c %s",
        database,
        sql,
    ).strip()


def redis_cli(redis, *args: str) -> str:
    """redis-cli on the Redis host as the operators' ACL user."""
    return redis.check_output(
        "REDISCLI_AUTH=%s redis-cli --no-auth-warning --user ops " + " ".join(["%s"] * len(args)),
        CFG["koinonia_redis_ops_password"],
        *args,
    )


# --- load, and what it sent, received, lost and duplicated ----------------------------------


class Snapshot(NamedTuple):
    """The load's counts at one moment, and that moment (time.monotonic())."""

    sent: int
    failed: int
    at: float


class ChaosLoad(BoundedLoad):
    """The shared bounded load (failed POSTs remembered for retry_failed_posts), with the
    chaos scenario's longer timeout and a way to wait for the requests in flight."""

    def __init__(self, token: str, group_id: str, **kwargs):
        kwargs.setdefault("timeout", LOAD_TIMEOUT)
        super().__init__(HTTPS_PORT, token, group_id, **kwargs)
        self._done_by_thread: Counter = Counter()

    def _record(self, kind, ok, detail, message_id, key):
        with self._lock:
            self._done_by_thread[threading.get_ident()] += 1
        super()._record(kind, ok, detail, message_id, key)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.report.sent, self.report.failed, time.monotonic())

    def settle(self) -> Snapshot:
        """Waits until each load thread has finished the request it had in flight, then
        returns (sent, failed, at): whatever fails after this was sent after this call."""
        with self._lock:
            before = dict(self._done_by_thread)
        wait_for(
            lambda: all(
                self._done_by_thread[t.ident] > before.get(t.ident, 0) for t in self._workers
            ),
            self.timeout + 30,
            step=0.2,
            what="the load's requests in flight finished",
        )
        return self.snapshot()


@dataclass
class Outcome:
    what: str
    sent: int
    received: int
    lost: int
    duplicated: int
    calls: int | None = None  # provider calls (deliveries only)
    unknown: int | None = None  # deliveries still `unknown` at the end (deliveries only)

    def __str__(self) -> str:
        text = (
            f"{self.what}: sent {self.sent}, received {self.received}, "
            f"lost {self.lost}, duplicated {self.duplicated}"
        )
        if self.calls is not None:
            text += f", provider calls {self.calls}, unknown left unresolved {self.unknown}"
        return text


def messages_per_key(db, keys: list[str]) -> dict[str, list[str]]:
    """Message ids recorded for each Idempotency-Key."""
    out: dict[str, list[str]] = {k: [] for k in keys}
    if not keys:
        return out
    quoted = ",".join(f"'{uuid.UUID(k)}'" for k in keys)  # UUIDs: nothing to escape
    sql = f"SELECT idempotency_key, id FROM message WHERE idempotency_key IN ({quoted})"  # noqa: S608
    for line in psql(db, sql).splitlines():
        key, message_id = line.split("|")
        out[key].append(message_id)
    return out


def request_outcome(db, load: ChaosLoad, retried: list[tuple[str, int]]) -> Outcome:
    """The load's requests: sent, answered 2xx, lost (an accepted or retried POST with no
    message), duplicated (a key with more than one message)."""
    report = load.report
    per_key = messages_per_key(db, report.idempotency_keys)
    accepted = set(report.idempotency_keys) - set(load.failed_keys)
    accepted |= {key for key, status in retried if 200 <= status < 300}
    lost = sum(1 for key in accepted if not per_key[key])
    duplicated = sum(max(0, len(ids) - 1) for ids in per_key.values())
    # The ids the API answered are the ones recorded (a replay answers the first message).
    recorded = {m for ids in per_key.values() for m in ids}
    lost += len(set(report.message_ids) - recorded)
    return Outcome("requests", report.sent, report.sent - report.failed, lost, duplicated)


# app/koinonia/delivery/sms/log.py: calls per delivery, in one hash per UTC day
CALLS_KEY_PREFIX = "sms:log:calls:"
CALLS_BATCH = 1000  # ids per script call: one redis-cli argument list stays well under ARG_MAX


HGET_OR_ZERO = (
    "local out = {} "
    "for i, field in ipairs(ARGV) do out[i] = redis.call('HGET', KEYS[1], field) or '0' end "
    "return out"
)


def provider_calls(redis, delivery_ids: list[str]) -> Counter:
    """Calls the log provider received, per delivery id (its uncapped per-delivery counts,
    today's and yesterday's: a run crossing midnight counts on both days)."""
    today = datetime.now(UTC).date()
    days = [CALLS_KEY_PREFIX + d.isoformat() for d in (today, today - timedelta(days=1))]
    calls: Counter = Counter()
    for start in range(0, len(delivery_ids), CALLS_BATCH):
        batch = delivery_ids[start : start + CALLS_BATCH]
        fields = [f"delivery-{uuid.UUID(d)}" for d in batch]
        for day in days:
            # HMGET prints a missing field as an empty line, and the trailing ones are lost
            # when the output is stripped: a script answers 0 for them instead.
            out = redis_cli(redis, "EVAL", HGET_OR_ZERO, "1", day, *fields)
            for delivery_id, value in zip(batch, out.splitlines(), strict=True):
                calls[delivery_id] += int(value)
    return calls


def deliveries(db, message_ids: list[str]) -> dict[str, tuple[str, str, int]]:
    """delivery id -> (status, provider_message_id, attempts) for these messages."""
    if not message_ids:
        return {}
    quoted = ",".join(f"'{uuid.UUID(m)}'" for m in message_ids)
    sql = (
        "SELECT id, status, coalesce(provider_message_id, ''), attempts FROM delivery "  # noqa: S608
        f"WHERE message_id IN ({quoted})"
    )
    out = {}
    for line in psql(db, sql).splitlines():
        delivery_id, status, provider_id, attempts = line.split("|")
        out[delivery_id] = (status, provider_id, int(attempts))
    return out


def status_count(db, message_ids: list[str], statuses: tuple[str, ...]) -> int:
    return sum(n for status, n in status_counts(db, message_ids).items() if status in statuses)


def _count_by(db, message_ids: list[str], expression: str, condition: str = "true"):
    """Deliveries of these messages counted by `expression` (SQL of our own), one statement."""
    quoted = ",".join(f"'{uuid.UUID(m)}'" for m in message_ids)
    sql = (
        f"SELECT {expression}, count(*) FROM delivery "  # noqa: S608
        f"WHERE {condition} AND message_id IN ({quoted}) GROUP BY 1"
    )
    counts = {}
    for line in psql(db, sql).splitlines():
        value, count = line.rsplit("|", 1)
        counts[value] = int(count)
    return counts


def status_counts(db, message_ids: list[str]) -> dict[str, int]:
    """Deliveries per status, read in one statement: counting status by status in separate
    statements races the in-doubt sweep, which moves deliveries from `unknown` to `sent`
    between them and so counts one delivery twice."""
    return _count_by(db, message_ids, "status")


def unknown_errors(db, message_ids: list[str]) -> dict[str, int]:
    """`unknown` deliveries of these messages counted by their last error (what made the
    provider call's outcome unknown)."""
    return _count_by(db, message_ids, "left(coalesce(last_error, ''), 160)", "status = 'unknown'")


def queued_count(db, message_ids: list[str]) -> int:
    return status_count(db, message_ids, ("queued",))


def delivery_outcome(db, redis, message_ids: list[str], deadline: float = SEND_DEADLINE):
    """Waits until no delivery of these messages is queued or being sent, and gives the
    `unknown` ones (a fault between a call and its record) time to be settled; then counts:
    every delivery must be `sent` after exactly one provider call, its id the one stored."""
    if message_ids:
        started = time.monotonic()
        wait_for(
            lambda: status_count(db, message_ids, ("queued", "sending")) == 0,
            deadline,
            step=3,
            what="every delivery out of `queued` and `sending`",
        )
        sent_at = time.monotonic()
        print(f"`unknown` when the sends ended, by error: {unknown_errors(db, message_ids)}")
        try:
            wait_for(
                lambda: status_count(db, message_ids, ("unknown", "queued", "sending")) == 0,
                SETTLE_DEADLINE,
                step=3,
                what="every `unknown` delivery settled",
            )
        except AssertionError as exc:
            print(exc)  # counted below as unknown-left-unresolved
        print(
            f"deliveries out of `queued` and `sending` after {sent_at - started:.1f} s, "
            f"settled {time.monotonic() - sent_at:.1f} s later"
        )
    rows = deliveries(db, message_ids)
    calls = provider_calls(redis, list(rows))
    lost = sum(
        1
        for d, (status, _p, _a) in rows.items()
        if status not in ("sent", "unknown") or not calls[d]
    )
    duplicated = sum(max(0, calls[d] - 1) for d in rows)
    unknown = sum(1 for status, _p, _a in rows.values() if status == "unknown")
    unrecorded = [d for d, (s, provider_id, _a) in rows.items() if s == "sent" and not provider_id]
    outcome = Outcome(
        "deliveries",
        len(rows),
        sum(1 for d in rows if calls[d]),
        lost,
        duplicated,
        calls=sum(calls[d] for d in rows),
        unknown=unknown,
    )
    print(outcome, f"(not sent: {[(d, r) for d, r in rows.items() if r[0] != 'sent'][:5]})")
    assert not unrecorded, unrecorded[:5]
    return outcome, rows


def bulk_group(db, token: str, members: int) -> tuple[str, str]:
    """A group of `members` opted-in members, inserted straight into the database in one
    statement (the API has no bulk import). Returns (group id, tag)."""
    tag = uuid.uuid4().hex[:8]
    r = https("POST", "/api/groups", {"name": f"Chaos bulk {tag}"}, token=token)
    assert r.status == 201, r
    gid = r.json()["id"]
    prefix = phone_prefix()
    assert members <= 10_000
    sql = f"""
WITH g AS (SELECT id, church_id FROM member_group WHERE id = '{uuid.UUID(gid)}'),
m AS (
  INSERT INTO member (id, church_id, first_name, last_name, phone, opt_in_sms,
                      created_at, updated_at)
  SELECT gen_random_uuid(), g.church_id, 'Bulk' || i, '{tag}',
         '{prefix}' || lpad(i::text, 4, '0'), true, now(), now()
  FROM g, generate_series(0, {members - 1}) AS i
  RETURNING id
)
INSERT INTO group_membership (id, group_id, member_id, created_at)
SELECT gen_random_uuid(), g.id, m.id, now() FROM g, m
"""  # noqa: S608 - a uuid, a hex tag and digits
    psql(db, sql)
    count = psql(db, f"SELECT count(*) FROM group_membership WHERE group_id = '{uuid.UUID(gid)}'")  # noqa: S608
    assert int(count) == members, count
    return gid, tag


def post_messages(token: str, gid: str, tag: str, count: int) -> list[str]:
    """`count` messages to the group, each with its own Idempotency-Key: their ids."""
    ids = []
    for i in range(count):
        key = str(uuid.uuid4())
        r = https(
            "POST",
            "/api/messages",
            {"targetType": "group", "targetIds": [gid], "content": f"Chaos {tag} #{i}"},
            token,
            {"Idempotency-Key": key},
            timeout=120,
        )
        assert r.status == 202, r
        ids.append(r.json()["id"])
    return ids


def print_phases(what: str, phases: dict[str, Snapshot]) -> None:
    """Requests sent and failed, and the seconds taken, between successive snapshots."""
    for a, b in itertools.pairwise(phases):
        print(
            f"{what} phase {a}: sent {phases[b].sent - phases[a].sent}, "
            f"failed {phases[b].failed - phases[a].failed}, "
            f"{phases[b].at - phases[a].at:.1f} s"
        )


def wait_ready_everywhere(apps, deadline: float = 120) -> None:
    for name, host in apps.items():
        wait_for(lambda h=host: ready_status(h) == 200, deadline, what=f"{name} ready")


def timed_get(token: str, path: str = "/api/members?limit=5", timeout: float = LOAD_TIMEOUT):
    """(status or exception name, seconds) of one GET through the balancer."""
    started = time.monotonic()
    conn = http.client.HTTPSConnection(
        "127.0.0.1", HTTPS_PORT, context=tls_context(), timeout=timeout
    )
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - started
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__, time.monotonic() - started
    finally:
        conn.close()
