"""A crash of the Redis master after its replicas stopped receiving (issue 18): which
acknowledged session writes it can lose, and a cron cycle whose lock it grants twice.

Redis replicates asynchronously. With ``min-replicas-to-write 1`` and ``min-replicas-max-lag
M`` (group_vars/redis.yml) the master accepts a write only while a replica has confirmed its
replication offset within the last M seconds. The worst case for a crash is replicas that
silently stop receiving (a cut network; a closed connection drops the count of good replicas
at once): the master goes on acknowledging writes until M has passed, and a crash loses them.
Redis counts the lag in whole seconds and refreshes its count of good replicas once a second,
so that window ends less than M + 2 s after the last confirmation (README, Redis with
Sentinel).

One failover for the module, staged at the racy points rather than timed by luck:
a scheduled message is due at the next minute's cron run; just before that minute the
replication streams are cut (tests/conftest.py `cut_replication`); the cron's run on the
master, lock, texts and the job's end, is waited for and seen to be unknown to the replicas;
the master is seen refusing writes; then it is killed. Meanwhile one app server logs in again
and again (each login an acknowledged session write) and the other reads every session back.
"""

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from conftest import (
    APP_SERVERS,
    OPERATOR,
    REDIS_NODES,
    REDIS_VARS,
    cut_replication,
    delivery_statuses,
    heal_replication,
    info,
    kill_master,
    new_master_announced,
    ops,
    probe_lines,
    psql,
    run_probe,
    set_is_healthy,
    start_probe,
    texting_outcome,
    wait_for,
)

MAX_LAG = REDIS_VARS["redis_min_replicas_max_lag"]
# After the replicas' last confirmation, the master acknowledges writes for less than this.
WINDOW_SECONDS = MAX_LAG + 2
MEMBERS = 5  # the texting group's opted-in members (ha-stack's probe `setup`)
SCHEDULED_PERIOD_SECONDS = 60  # the scheduled-messages cron: every minute (app jobs.py)
LEAD_SECONDS = 10  # from scheduling the message to its minute, at least
WRITES_BEFORE_DUE_SECONDS = 5  # session writes replicated before the cut
CUT_BEFORE_DUE_SECONDS = 1.5  # the cut, before the cron's minute (the cron fires on the clock)
SETTLE_BOUND_SECONDS = 120
# SAQ's record of the scheduled-messages cron job (queue koinonia-sms, key cron:<function>):
# its status and the time its last run started.
CRON_JOB_RECORD = "saq:job:koinonia-sms:cron:scheduled_messages"


@dataclass
class Crash:
    master: str
    new_master: str
    cut_from: float  # the cut asked for: the replicas received everything sent before this
    cut_at: float  # the cut in place: their last confirmation came before this
    refused_at: float
    killed_at: float
    writes: dict  # the writer's report: acknowledged [token, start, end], refused counts
    read_back: dict  # the other app server's: statuses, and the tokens it did not know
    scheduled_id: str
    message_ids: list
    lock_key: str
    first_grant: str  # the cycle's lock on the old master
    on_replicas: dict  # the same key on its replicas just before the kill
    second_grant: str  # the cycle's lock on the new master


def scheduled_message(scheduled_id):
    """The message the scheduled one became, once its row says `sent`; else None."""
    sql = (
        "SELECT status, coalesce(message_id::text, '') FROM scheduled_message "  # noqa: S608
        f"WHERE id = '{uuid.UUID(scheduled_id)}'"
    )
    status, message_id = psql(sql).split("|")
    return message_id if status == "sent" else None


def cron_job_record(node):
    """NODE's record of the scheduled-messages cron job (status, started, ... ) or {}."""
    stored = ops(node, "GET", CRON_JOB_RECORD)
    return json.loads(stored) if stored else {}


def cycle_finished(node, due):
    """True once NODE records the cron job's run of DUE's cycle as complete, or already the
    next cycle's job (SAQ enqueues it only once the run before it has finished)."""
    record = cron_job_record(node)
    if record.get("status") == "complete":
        return record.get("started", 0) >= due * 1000  # milliseconds
    return record.get("scheduled", 0) >= due + SCHEDULED_PERIOD_SECONDS  # seconds


def messages_of_schedule(scheduled_id):
    """Every message recorded under the scheduled message's idempotency key."""
    key = f"scheduled:{uuid.UUID(scheduled_id)}"
    return psql(f"SELECT id FROM message WHERE idempotency_key = '{key}'").split()  # noqa: S608


@pytest.fixture(scope="module")
def crash(texting, provider):
    master = wait_for(set_is_healthy, 90, "a healthy Redis set", step=1)
    replicas = [node for node in REDIS_NODES if node != master]
    period = SCHEDULED_PERIOD_SECONDS
    due = (int(time.time()) // period + 1) * period
    if due - time.time() < LEAD_SECONDS:
        due += period
    send_at = datetime.fromtimestamp(due, UTC).isoformat()
    scheduled_id = run_probe(
        APP_SERVERS[0], "schedule", texting["token"], texting["group"], send_at
    )["id"]
    lock_key = f"lock:cron:scheduled-messages:{due // period}"

    def clock_at(instant):
        return wait_for(lambda: time.time() >= instant, period + 30, "the clock", step=0.05)

    clock_at(due - WRITES_BEFORE_DUE_SECONDS)
    writer = start_probe(
        APP_SERVERS[0], "write", str(WRITES_BEFORE_DUE_SECONDS + WINDOW_SECONDS + 6), *OPERATOR
    )
    try:
        clock_at(due - CUT_BEFORE_DUE_SECONDS)
        cut_from = time.time()
        cut_replication(master)
        cut_at = time.time()
        # The cron's run on the master its replicas no longer hear: the message recorded and
        # every text sent, while the master still accepts writes.
        accepting = cut_at + MAX_LAG - time.time()
        message_id = wait_for(
            lambda: scheduled_message(scheduled_id), accepting, "the scheduled message sent"
        )
        wait_for(
            lambda: list(delivery_statuses([message_id]).values()) == ["sent"] * MEMBERS,
            max(cut_at + MAX_LAG - time.time(), 1),
            "its deliveries sent",
        )
        # ... and the cron job that ran it recorded finished there. Its end (the lock's last
        # extension, SAQ's completion record) is a write too: left until the master refuses
        # writes, it would be retried on the new master after the kill and record the cycle
        # as done there, and the cycle would not run again.
        wait_for(
            lambda: cycle_finished(master, due),
            max(cut_at + MAX_LAG - time.time(), 1),
            "the cycle's cron job recorded finished on the master",
        )
        first_grant = ops(master, "GET", lock_key)
        on_replicas = {replica: ops(replica, "GET", lock_key) for replica in replicas}
        # The master refuses writes once no replica has confirmed within max-lag.
        wait_for(
            lambda: info(master, "replication").get("min_slaves_good_slaves") == "0",
            WINDOW_SECONDS + 30,
            "the master refusing writes",
        )
        refused_at = time.time()
        kill_master(master)
        killed_at = time.time()
        new_master = new_master_announced(master)
        # The cycle's cron job was taken on the old master only: on the new one it is still
        # due, runs again and takes the cycle's lock a second time.
        try:
            second_grant = wait_for(
                lambda: ops(new_master, "GET", lock_key),
                due + period - time.time(),
                "the cycle's lock granted on the new master",
                step=0.5,
            )
        except AssertionError as missed:
            # What the new master knows of the cycle's job, and whether it takes writes.
            record = cron_job_record(new_master)
            replication = info(new_master, "replication")
            raise AssertionError(
                f"{missed}; {new_master} records the cron job "
                f"{ {k: record.get(k) for k in ('status', 'scheduled', 'started')} }, "
                f"its replicas in time: {replication.get('min_slaves_good_slaves')}"
            ) from None
        (writes,) = probe_lines(writer, 120)
    finally:
        if writer.poll() is None:
            writer.kill()
        heal_replication(master)
    tokens = "\n".join(token for token, _start, _end in writes["acknowledged"])
    read_back = run_probe(APP_SERVERS[1], "check", stdin=tokens)
    yield Crash(
        master,
        new_master,
        cut_from,
        cut_at,
        refused_at,
        killed_at,
        writes,
        read_back,
        scheduled_id,
        messages_of_schedule(scheduled_id),
        lock_key,
        first_grant,
        on_replicas,
        second_grant,
    )
    wait_for(set_is_healthy, 120, "the Redis set healthy again", step=1)


def test_a_crash_loses_only_session_writes_acknowledged_within_max_lag_after_replication_stopped(
    crash,
):
    acknowledged = crash.writes["acknowledged"]
    unknown = set(crash.read_back["unknown"])
    lost = [(start, end) for token, start, end in acknowledged if token in unknown]
    window_end = crash.cut_at + WINDOW_SECONDS
    in_window = sum(
        1 for _t, start, end in acknowledged if end >= crash.cut_at and start < window_end
    )
    print(
        f"\nreplication cut on {crash.master} (in {crash.cut_at - crash.cut_from:.1f} s); "
        f"it refused writes "
        f"{crash.refused_at - crash.cut_at:.1f} s later (max-lag {MAX_LAG} s), was killed "
        f"{crash.killed_at - crash.cut_at:.1f} s after the cut; {crash.new_master} the new "
        f"master. Session writes: {len(acknowledged)} acknowledged, {in_window} of them "
        f"within {WINDOW_SECONDS} s after the cut, {len(lost)} lost"
        + (
            f" (acknowledged {min(e for _s, e in lost) - crash.cut_at:+.1f} s to "
            f"{max(e for _s, e in lost) - crash.cut_at:+.1f} s after the cut)"
            if lost
            else ""
        )
        + f"; refused {crash.writes['refused']}; read back {crash.read_back['statuses']}"
    )
    assert crash.read_back["checked"] == len(acknowledged)
    assert set(crash.read_back["statuses"]) <= {"200", "401"}, crash.read_back["statuses"]
    # The cut held: writes the master acknowledged after it were lost in the crash.
    assert lost
    # Only those: each lost write was made before the window closed ...
    assert all(start < window_end for start, _end in lost), (lost, window_end)
    # ... and none acknowledged before the replicas stopped receiving (half a second's margin:
    # what was on its way when the cut came).
    assert all(end >= crash.cut_from - 0.5 for _start, end in lost), (lost, crash.cut_from)


def test_a_cron_cycle_whose_lock_the_failover_granted_twice_sends_its_scheduled_message_once(
    crash,
):
    print(
        f"\nscheduled-messages cycle lock {crash.lock_key}: held by {crash.first_grant!r} on "
        f"{crash.master} (its replicas: {crash.on_replicas}), after the failover by "
        f"{crash.second_grant!r} on {crash.new_master}"
    )
    # The failover granted the cycle's lock twice: the cycle ran on both masters.
    assert crash.first_grant and not any(crash.on_replicas.values()), crash.on_replicas
    assert crash.second_grant and crash.second_grant != crash.first_grant
    # What it guards is fenced in PostgreSQL: one message, each member texted once.
    assert len(crash.message_ids) == 1, crash.message_ids
    outcome = texting_outcome(crash.message_ids, MEMBERS, SETTLE_BOUND_SECONDS)
    print("\n".join(f"  {what:>17}: {count}" for what, count in outcome.items()))
    assert outcome["deliveries"] == MEMBERS
    assert outcome["lost"] == 0 and outcome["unknown-left"] == 0, outcome
    assert outcome["duplicated"] == 0 and outcome["provider calls"] == MEMBERS, outcome
