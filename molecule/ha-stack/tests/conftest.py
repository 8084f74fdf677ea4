"""Shared helpers of the ha-stack scenario's Testinfra tests: the whole stack over a Patroni
cluster, deployed by site.yml.

Every fault test starts from a healthy cluster (one leader, one streaming replica) and
leaves one behind, so the tests do not depend on their order. Credentials are the stack
base's test-only values (molecule/resources/stack/inventory.yml), read from the files.

"Texted once" is counted where the SMS leaves the platform: the log provider counts every
call it receives, per delivery, in the field ``delivery-<id>`` of the day's hash
``sms:log:calls:<UTC date>`` on the Redis host (no deduplication, as with Twilio).
"""

from __future__ import annotations

import itertools
import json
import pathlib
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "tests"))
from containers import docker_exec
from stackclient import wait_for
from stackvars import stack_group_vars

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent.parent
CFG = stack_group_vars(SCENARIO_DIR)["all"]
DB_NODES = ["hs-db1", "hs-db2"]
REDIS = "hs-witness"
APP = "hs-app"
PROBE = pathlib.Path(__file__).with_name("probe.py")
# The bound: writes accepted again within 30 s of losing the leader.
WRITES_AGAIN_WITHIN = 30
SEND_DEADLINE = 300


def members() -> list[dict]:
    """Patroni's view of the cluster, asked on whichever node answers."""
    for node in DB_NODES:
        out = docker_exec(
            node,
            "runuser", "-u", "postgres", "--",
            "patronictl", "-c", "/etc/patroni/config.yml", "list", "--format", "json",
            check=False,
            timeout=20,
        )  # fmt: skip
        if out.startswith("["):
            return json.loads(out)
    return []


def leader() -> str | None:
    """The running leader, or None while there is not exactly one."""
    names = [m["Member"] for m in members() if m["Role"] == "Leader" and m["State"] == "running"]
    return names[0] if len(names) == 1 else None


def healthy() -> bool:
    found = members()
    return (
        len(found) == 2
        and sum(m["Role"] == "Leader" and m["State"] == "running" for m in found) == 1
        and sum(m["Role"] == "Replica" and m["State"] == "streaming" for m in found) == 1
    )


@pytest.fixture
def healthy_cluster():
    wait_for(healthy, 120, step=2, what="one leader and one streaming replica")
    yield
    wait_for(healthy, 180, step=2, what="one leader and one streaming replica after the test")


def patroni_said(node: str, since: float) -> list[str]:
    """The last lines Patroni logged on NODE since `since` (epoch seconds) about keeping or
    losing the leader role: what a failed fault test shows of why."""
    out = docker_exec(
        node,
        "journalctl", "-u", "patroni", "--since", f"@{int(since)}", "--no-pager", "-o", "cat",
        check=False,
        timeout=30,
    )  # fmt: skip
    wanted = ("demot", "failsafe", "Request failed", "DCS", "leader", "Error")
    return [line for line in out.splitlines() if any(w in line for w in wanted)][-8:]


def psql(node, sql, database="koinonia"):
    """One statement on a database node as postgres over the local socket, unaligned."""
    return docker_exec(
        node,
        "runuser", "-u", "postgres", "--",
        "psql", "--no-psqlrc", "-X", "-v", "ON_ERROR_STOP=1", "-tA", "-d", database, "-c", sql,
    )  # fmt: skip


def messages_since(started: float) -> int:
    """Messages recorded since `started` (the load's), counted on the leader."""
    sql = f"SELECT count(*) FROM message WHERE created_at >= to_timestamp({started:.3f})"  # noqa: S608 - a float
    node = leader()
    return int(psql(node, sql)) if node else 0


def app_ready() -> bool:
    out = docker_exec(
        APP,
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
        "http://127.0.0.1:3000/health/ready",
        check=False,
    )  # fmt: skip
    return out == "200"


def probe(*args, timeout=120) -> dict:
    return json.loads(
        docker_exec(APP, "python3", "-", *args, stdin=PROBE.read_text(), timeout=timeout)
    )


def start_probe(*args) -> subprocess.Popen:
    process = subprocess.Popen(
        ["docker", "exec", "-i", APP, "python3", "-", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdin.write(PROBE.read_text())
    process.stdin.close()
    return process


def probe_for(seconds: float, texting: dict) -> dict:
    """The message load for SECONDS, waited for."""
    return finish_probe(
        start_probe("messages", str(seconds), texting["token"], texting["group"]), seconds + 180
    )


def finish_probe(process: subprocess.Popen, timeout: float) -> dict:
    out, err = process.stdout.read(), None
    process.wait(timeout=timeout)
    if process.returncode != 0:
        err = process.stderr.read()
        raise AssertionError(f"probe failed ({process.returncode}): {err[-2000:]}")
    return json.loads(out)


@pytest.fixture(scope="session")
def texting():
    """The owner's token and a group of five opted-in members."""
    wait_for(app_ready, 120, what="the app ready")
    return probe("setup", CFG["koinonia_owner_email"], CFG["koinonia_owner_password"])


HGET_OR_ZERO = (
    "local out = {} "
    "for i, field in ipairs(ARGV) do out[i] = redis.call('HGET', KEYS[1], field) or '0' end "
    "return out"
)


def provider_calls(delivery_ids: list[str]) -> dict[str, int]:
    """Calls the log provider received per delivery (today's and yesterday's hashes)."""
    today = datetime.now(UTC).date()
    calls = dict.fromkeys(delivery_ids, 0)
    fields = [f"delivery-{uuid.UUID(d)}" for d in delivery_ids]
    for day in (today, today - timedelta(days=1)):
        out = docker_exec(
            REDIS,
            "redis-cli", "--no-auth-warning", "--user", "ops",
            "EVAL", HGET_OR_ZERO, "1", f"sms:log:calls:{day.isoformat()}", *fields,
            env={"REDISCLI_AUTH": CFG["koinonia_redis_ops_password"]},
        )  # fmt: skip
        for delivery_id, value in zip(delivery_ids, out.splitlines(), strict=True):
            calls[delivery_id] += int(value)
    return calls


def deliveries(node, message_ids: list[str]) -> dict[str, str]:
    """delivery id -> status, for these messages."""
    quoted = ",".join(f"'{uuid.UUID(m)}'" for m in message_ids)
    sql = f"SELECT id, status FROM delivery WHERE message_id IN ({quoted})"  # noqa: S608 - uuids
    return dict(line.split("|") for line in psql(node, sql).splitlines())


def messages_per_key(node, keys: list[str]) -> dict[str, int]:
    quoted = ",".join(f"'{uuid.UUID(k)}'" for k in keys)
    sql = (
        "SELECT idempotency_key, count(*) FROM message "  # noqa: S608 - uuids
        f"WHERE idempotency_key IN ({quoted}) GROUP BY 1"
    )
    counts = dict.fromkeys(keys, 0)
    for line in psql(node, sql).splitlines():
        key, count = line.split("|")
        counts[key] = int(count)
    return counts


def texted_once(report: dict) -> str:
    """Every accepted POST is one message, every delivery of it sent after exactly one
    provider call; a summary line for the test's output."""
    keys = [a["key"] for a in report["accepted"]]
    ids = [a["id"] for a in report["accepted"]]
    node = wait_for(leader, 60, what="a leader")
    per_key = messages_per_key(node, keys)
    assert all(count == 1 for count in per_key.values()), {
        k: c for k, c in per_key.items() if c != 1
    }

    def all_settled():
        rows = deliveries(node, ids)
        return rows if rows and all(s in ("sent", "failed") for s in rows.values()) else None

    rows = wait_for(all_settled, SEND_DEADLINE, step=3, what="every delivery settled")
    assert len(rows) == 5 * len(ids), (len(rows), len(ids))
    calls = provider_calls(list(rows))
    not_sent = {d: s for d, s in rows.items() if s != "sent"}
    lost = [d for d in rows if calls[d] == 0]
    duplicated = sum(max(0, c - 1) for c in calls.values())
    assert not not_sent and not lost and duplicated == 0, (not_sent, lost, duplicated)
    return (
        f"messages {len(ids)}, deliveries {len(rows)}, provider calls {sum(calls.values())}, "
        f"lost 0, duplicated 0"
    )


def unavailable_window(report: dict, since: float) -> float:
    """Seconds from `since` until the first POST accepted after the longest gap that
    follows it (the writes' outage)."""
    times = [since, *sorted(a["at"] for a in report["accepted"] if a["at"] > since)]
    assert len(times) > 1, "no write accepted after the fault"
    gaps = [(b - a, b) for a, b in itertools.pairwise(times)]
    longest, resumed = max(gaps)
    return resumed - since if longest > 1 else 0.0
