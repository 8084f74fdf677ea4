"""Checklist phase 2.3, Distributed Job Locking, with three app servers each running a SAQ
worker with the cron jobs:

* a cron cycle runs exactly once: a recurring message due every minute produces exactly one
  Message per cycle (minute) across the three workers, and the cycle's lock
  (``cron:recurring-messages:<cycle>``, kept until the cycle ends) names one holder;
* ``/api/admin/locks`` shows the holder of a lock while a long job runs: a job holding a lock
  through the app's own LockService (TTL 3 s, running 12 s) on one app server is listed with
  its host:pid for its whole run (so the lock is extended), another server cannot take it,
  and it is gone once the job ends.
"""

import json
import shlex
import time
from datetime import datetime

import pytest

from .conftest import APPS, CFG, https, unique, wait_for

RECURRING_LOCK = "cron:recurring-messages:"


def _locks(token):
    r = https("GET", "/api/admin/locks", token=token)
    assert r.status == 200, r
    return {lock["name"]: lock for lock in r.json()["data"]}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_2_3_admin_locks_is_for_operators_only(owner_token):
    assert https("GET", "/api/admin/locks").status == 401
    r = https("GET", "/api/admin/locks", token=owner_token)
    assert r.status == 403, r
    assert r.json()["error"]["code"]


def test_2_3_every_app_server_runs_a_worker(apps):
    # The "exactly once" below means something only with several competing workers.
    for name in APPS:
        assert apps[name].service("koinonia-worker").is_running, name


def test_2_3_recurring_cron_cycle_runs_exactly_once_across_three_workers(
    owner_token, operator_token, redis_host
):
    phone = f"+1 312 555 {int(time.time()) % 10000:04d}"
    member = https(
        "POST",
        "/api/members",
        {"firstName": "Cron", "lastName": unique(), "phone": phone, "optInSms": True},
        token=owner_token,
    )
    assert member.status == 201, member
    member_id = member.json()["id"]
    content = f"checklist 2.3 recurring {unique()}"
    created = https(
        "POST",
        "/api/recurring-messages",
        {
            "content": content,
            "targetType": "members",
            "targetIds": [member_id],
            "schedule": "* * * * *",
        },
        token=owner_token,
    )
    assert created.status == 201, created
    recurring_id = created.json()["id"]
    cycle_locks = {}
    try:

        def last_run():
            r = https("GET", "/api/recurring-messages", token=owner_token)
            assert r.status == 200, r
            item = next(i for i in r.json()["data"] if i["id"] == recurring_id)
            return item["lastRunAt"]

        seen = []
        for _ in range(2):  # two cycles (minutes)
            previous = seen[-1] if seen else None

            def new_run(previous=previous):
                value = last_run()
                return value if value != previous else None

            run = wait_for(new_run, 135, step=2, what="the recurring message's next cron cycle")
            seen.append(run)
            # The cycle's lock stays until the minute ends: one holder, an app server.
            cycle = int(_ts(run) // 60)
            locks = _locks(operator_token)
            lock = locks.get(f"{RECURRING_LOCK}{cycle}")
            assert lock is not None, sorted(locks)
            assert lock["holder"].split(":")[0] in APPS, lock
            assert lock["ttlMs"] is not None and 0 < lock["ttlMs"] <= 60_000, lock
            cycle_locks[cycle] = lock["holder"]
    finally:
        https("DELETE", f"/api/recurring-messages/{recurring_id}", token=owner_token)

    # Let any competing worker's run of the last cycle finish, then count.
    time.sleep(5)
    r = https("GET", "/api/messages?limit=200", token=owner_token)
    assert r.status == 200, r
    messages = [m for m in r.json()["data"] if m["content"] == content]
    minutes = sorted(int(_ts(m["createdAt"]) // 60) for m in messages)
    assert len(minutes) >= 2, messages
    assert len(set(minutes)) == len(minutes), f"a cycle ran twice: {minutes}"
    assert set(cycle_locks) <= set(minutes), (cycle_locks, minutes)
    for m in messages:
        assert m["recipientCount"] == 1, m

    # And the member was texted once per cycle by the log provider (recorded in Redis).
    def sends():
        out = redis_host.check_output(
            "redis-cli --no-auth-warning --user koinonia --pass %s LRANGE sms:log 0 -1",
            CFG["koinonia_redis_app_password"],
        )
        return [rec for rec in map(json.loads, out.splitlines()) if rec["body"] == content]

    recs = wait_for(
        lambda: len(sends()) >= len(messages) and sends(),
        60,
        what="the log provider's sends of the recurring message",
    )
    assert len(recs) == len(messages), recs
    assert {rec["to"] for rec in recs} == {member.json()["phone"]}


LONG_JOB = r"""
import asyncio, pathlib, sys
from koinonia.stores.locks import LockService
from koinonia.stores.client import create_redis
from koinonia.settings import load_settings

async def main(name, seconds, mode):
    redis = create_redis(load_settings())
    locks = LockService(redis)
    try:
        if mode == "try":
            lock = await locks.acquire(name, ttl_ms=3000)
            if lock is not None:
                await locks.release(lock)
            print("acquired" if lock else "held-elsewhere")
            return
        async with locks.hold(name, ttl_ms=3000) as lock:
            if lock is None:
                pathlib.Path("/tmp/ck_long_job.result").write_text("not-acquired")
                return
            await asyncio.sleep(seconds)
            pathlib.Path("/tmp/ck_long_job.result").write_text(
                "lost" if lock.lost.is_set() else "ok")
    finally:
        await redis.aclose()

asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3]))
"""
PY = "/opt/koinonia/current/venv/bin/python"


def _put_script(host):
    host.run_expect(
        [0], f"cat > /tmp/ck_long_job.py <<'EOF'\n{LONG_JOB}\nEOF\nrm -f /tmp/ck_long_job.result"
    )


@pytest.fixture
def long_job_hosts(apps):
    holder, other = apps[APPS[0]], apps[APPS[1]]
    for h in (holder, other):
        _put_script(h)
    yield holder, other
    holder.run("systemctl stop ck-long-job; systemctl reset-failed ck-long-job")


def test_2_3_admin_locks_shows_the_holder_while_a_long_job_runs(operator_token, long_job_hosts):
    holder, other = long_job_hosts
    name = f"checklist-2.3-long-job-{unique()}"
    run_for = 12  # seconds; the lock's TTL is 3 s, so it lives on only if it is extended
    holder.run_expect(
        [0],
        "systemd-run --unit=ck-long-job -p EnvironmentFile=/etc/koinonia/"
        f"koinonia.env {PY} /tmp/ck_long_job.py {shlex.quote(name)} {run_for} hold",
    )
    lock = wait_for(
        lambda: _locks(operator_token).get(name),
        30,
        step=0.5,
        what="the long job's lock in /api/admin/locks",
    )
    first_seen = time.monotonic()
    pid = holder.check_output("systemctl show -p MainPID --value ck-long-job").strip()
    assert lock["holder"] == f"{APPS[0]}:{pid}", lock
    assert 0 < lock["ttlMs"] <= 3000, lock

    # Another server cannot take it while the job runs.
    out = other.check_output(
        f"set -a; . /etc/koinonia/koinonia.env; set +a; {PY} /tmp/ck_long_job.py "
        f"{shlex.quote(name)} 0 try"
    )
    assert out.strip() == "held-elsewhere"

    # Well past the 3 s TTL the lock is still listed, with the same holder: it is extended.
    while time.monotonic() - first_seen < 7:
        assert holder.run("systemctl is-active ck-long-job").rc == 0, "the job ended early"
        current = _locks(operator_token).get(name)
        assert current is not None and current["holder"] == lock["holder"], current
        time.sleep(1)

    # When the job ends, the lock is released (not left to expire) and disappears.
    wait_for(
        lambda: holder.run("systemctl is-active ck-long-job").rc != 0,
        run_for + 15,
        what="the long job to finish",
    )
    assert holder.check_output("cat /tmp/ck_long_job.result").strip() == "ok"
    assert name not in _locks(operator_token)
